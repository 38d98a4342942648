"""Token Recycling: the successor table learns from verifications' logits, and its chains decode exactly."""

import pytest
import torch
from helpers import (
    ALPHA,
    NEAR_TIE_FLOAT32,
    SAMPLED_PROMPT,
    SAMPLING,
    accept_everything,
    assert_same_tokens,
    chi_square_p_value,
    exact_token_marginal,
    sample_counts,
)

import ssd
import ssd.core.decoding
from ssd.core.decoding import speculative_decode
from ssd.core.sampling import logits_to_probs
from ssd.methods.hybrid import DraftConfig
from ssd.methods.recycling import Recycler, SuccessorTable, recycling_proposers

ALONE = DraftConfig.of(gate=False, ngram_size=0)  # with only a Recycler, each step recycles when the table has a chain


def test_table_keeps_each_inputs_latest_top_successors():
    table = SuccessorTable(k=2)
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 9.0]])
    table.update([7, 1], logits)  # the third row has no input token here: it is not read
    assert table.rows == {7: [1, 3], 1: [0, 2]}
    assert table.chain(7, 5) == [1, 0]  # 7 -> 1 -> 0, which has no row
    table.update([7], torch.tensor([[0.0, 0.0, 4.0, 0.0]]))
    assert table.rows[7][0] == 2 and table.chain(7, 1) == [2]
    assert table.chain(3, 4) == []


@pytest.mark.parametrize("max_tokens", [0, -1, True, 1.5])
def test_bad_max_tokens_are_refused(max_tokens):
    with pytest.raises(ValueError):
        Recycler(max_tokens)


def test_recycled_chains_decode_exactly(embedded, prompts, base_tokens):
    """Recycled drafts alone (plain steps where the table has no chain): output equals base's, and
    some recycled tokens are accepted."""
    model, tokenizer = embedded
    accepted = 0
    for prompt in prompts[::3]:
        input_ids = tokenizer(prompt, return_tensors="pt").input_ids
        recycler = Recycler()
        result = speculative_decode(model, input_ids, 48, None, ALONE.self_draft, None, None, proposers=[recycler])
        assert recycler.proposed == result.num_drafted_tokens
        accepted += recycler.accepted
        assert_same_tokens(base_tokens(input_ids, 48), result.tokens, model, input_ids, NEAR_TIE_FLOAT32, "recycling")
    assert accepted > 0


def test_recycling_method_with_the_gate_equals_base(embedded, prompts, base_tokens):
    model, tokenizer = embedded
    model.set_draft_precision("int4")
    input_ids = tokenizer(prompts[1], return_tensors="pt").input_ids
    out = ssd.generate(model, input_ids, method="recycling", max_new_tokens=48, eos_token_id=[])
    assert_same_tokens(base_tokens(input_ids, 48), out[0, input_ids.shape[1]:].tolist(), model, input_ids,
                       NEAR_TIE_FLOAT32, "recycling, gated")
    assert isinstance(recycling_proposers(model, DraftConfig())[0], Recycler)


# --- sampling ------------------------------------------------------------------------------

# As in test_sampling.py. The broken acceptance rule gets as many: a recycled draft is the full model's own
# argmax after the first token, so accepting every draft samples greedy 2nd tokens, nearer the true marginal
# than a skipped-layer draft's (seed 1234: p = 0.015 at 50 trials, 1.6e-5 at 100; the correct rule 0.78).
TRIALS = 100


def second_token_p_value(model, input_ids, expected, table: SuccessorTable, trials: int) -> float:
    """Chi-square p-value of the sampled 2nd token, drafted from a table that earlier generations filled
    (the successors of every first token the full model can sample)."""
    generator = torch.Generator().manual_seed(1234)
    recycled = 0

    def draw() -> int:
        nonlocal recycled
        recycler = Recycler(max_tokens=1, table=table)
        result = speculative_decode(model, input_ids, 3, None, ALONE.self_draft, SAMPLING, generator, proposers=[recycler])
        recycled += recycler.proposed
        return result.tokens[1]

    counts = sample_counts(draw, expected, trials)
    if counts.sum() == trials:  # (sampling stops early only at a forbidden token: the verdict is settled)
        assert recycled > trials / 2  # the 2nd token was really a recycled draft
    return chi_square_p_value(counts, expected, trials)


@pytest.fixture(scope="module")
def sampling_setting(embedded):
    model, tokenizer = embedded
    input_ids = tokenizer(SAMPLED_PROMPT, return_tensors="pt").input_ids
    cache = model.new_cache(input_ids.shape[1] + 1)
    with torch.no_grad():
        p1 = logits_to_probs(model(input_ids, cache, 0)[0, -1], SAMPLING)
        first = torch.nonzero(p1).flatten().tolist()
        table = SuccessorTable()
        for t1 in first:  # each possible first token's successors, as a verification of it would give
            table.update([t1], model(torch.tensor([[t1]]), cache, input_ids.shape[1])[0])
    return model, input_ids, exact_token_marginal(model, input_ids, SAMPLING, 2), table


def test_recycled_sampling_keeps_the_distribution(sampling_setting):
    model, input_ids, expected, table = sampling_setting
    assert second_token_p_value(model, input_ids, expected, SuccessorTable(table.k, dict(table.rows)), TRIALS) > ALPHA


def test_recycled_sampling_broken_acceptance_rule_is_detected(sampling_setting, monkeypatch):
    model, input_ids, expected, table = sampling_setting
    monkeypatch.setattr(ssd.core.decoding, "verify_drafts", accept_everything)
    assert second_token_p_value(model, input_ids, expected, SuccessorTable(table.k, dict(table.rows)), TRIALS) < ALPHA


@torch.no_grad()
def test_guessed_draft_passes_draft_the_drafts_own_chain(embedded, prompts):
    """`draft_with_guesses`: right guesses (the draft's own next tokens) draft the same chain as one-token
    passes in fewer passes; wrong ones cost a pass per token and change nothing."""
    from ssd.core.self_draft import draft_tokens
    from ssd.methods.recycling import draft_with_guesses

    model, tokenizer = embedded
    draft = ssd.Draft.skipping(*ssd.core.skip_layers.hand_made_set(model.num_layers))
    input_ids = tokenizer(prompts[0], return_tensors="pt").input_ids
    cache = model.new_cache(input_ids.shape[1] + 20)
    last = int(ssd.core.decoding.prefill(model, input_ids, cache).argmax())
    committed = input_ids.shape[1]
    chain, _, _ = draft_tokens(model, draft, cache, last, committed, 8, 0.0, None, None)
    after = dict(zip([last, *chain], chain))  # the draft's own next token after each of its inputs

    def right(token, n):
        return [after[token]][:n] if token in after else []

    guessed, passes = draft_with_guesses(model, draft, cache, last, committed, 8, 0.0, None, right)
    assert guessed == chain and passes <= len(chain) // 2 + 1
    wrong, passes = draft_with_guesses(model, draft, cache, last, committed, 8, 0.0, None, lambda token, n: [0][:n])
    assert wrong == chain and passes == len(chain)
