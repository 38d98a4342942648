"""llama.cpp's draft on the model's own GGUF (`ssd.methods.gguf_draft`): exact greedy and sampled output, a cache
that follows the verifier, and a clear error for a GGUF that is not the model's. Needs the `llama` extra;
without it, only the tests of what happens without it run."""

import pytest
import torch
from helpers import (
    ALPHA,
    NEAR_TIE_FLOAT32,
    SAMPLED_PROMPT,
    SAMPLING,
    assert_same_tokens,
    chi_square_p_value,
    exact_token_marginal,
    sample_counts,
    tiny_llama,
)

import ssd
import ssd.methods.gguf_draft
from ssd.core.decoding import speculative_decode
from ssd.core.self_draft import SelfDraftConfig
from ssd.methods.gguf_draft import GGUFDraft, GGUFDraftConfig, gguf_draft_proposers, llama_cpp_installed, own_gguf
from ssd.methods.hybrid import DraftConfig, default_proposers, hybrid_generate

needs_llama_cpp = pytest.mark.skipif(not llama_cpp_installed(), reason='needs the llama extra: pip install -e ".[llama]"')
MAX_NEW_TOKENS = 64
# The GGUF draft alone, every step (no gate, no lookups, no self-draft: `proposers=` replaces them).
ALONE = SelfDraftConfig(max_step_draft=6, th_stop_draft=0.4)
LONG = SelfDraftConfig(max_step_draft=12, th_stop_draft=0.0, auto_th_stop_draft=False)  # 12 drafts a step: some rejected


@pytest.fixture(scope="module")
def gguf(embedded):
    return own_gguf(embedded[0])


@needs_llama_cpp
def test_greedy_gguf_draft_equals_base(embedded, prompts, base_tokens, gguf):
    """Every step drafted by llama.cpp, greedy: output equals base's token for token, most drafts accepted."""
    model, tokenizer = embedded
    for prompt in prompts[::2]:
        input_ids = tokenizer(prompt, return_tensors="pt").input_ids
        result = speculative_decode(model, input_ids, MAX_NEW_TOKENS, None, ALONE, None, None,
                                    proposers=[GGUFDraft.of(model, ALONE, gguf)])
        assert_same_tokens(base_tokens(input_ids, MAX_NEW_TOKENS), result.tokens, model, input_ids, NEAR_TIE_FLOAT32,
                           "GGUF draft")
        assert result.drafted_by_kind["gguf"] == result.num_drafted_tokens > 0
        assert result.num_accepted_tokens > result.num_drafted_tokens / 2  # the same weights, quantised


@needs_llama_cpp
def test_the_default_decoder_drafts_with_it_and_stays_exact(embedded, prompts, base_tokens):
    """`hybrid` with its defaults, the model's draft skipping nothing: llama.cpp's draft replaces the self-draft
    beside the lookups, under the gate; output is base's, and the counts by kind add up."""
    model, tokenizer = embedded
    input_ids = tokenizer(prompts[0], return_tensors="pt").input_ids
    out = ssd.generate(model, input_ids, method="hybrid", max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                       return_dict_in_generate=True)
    assert_same_tokens(base_tokens(input_ids, MAX_NEW_TOKENS), out.tokens, model, input_ids, NEAR_TIE_FLOAT32,
                       "hybrid with the GGUF draft")
    assert out.drafted_by_kind.get("gguf", 0) > 0 and "draft" not in out.drafted_by_kind
    assert sum(out.drafted_by_kind.values()) == out.num_drafted_tokens
    assert sum(out.accepted_by_kind.values()) == out.num_accepted_tokens
    assert all(out.accepted_by_kind[kind] <= drafted for kind, drafted in out.drafted_by_kind.items())
    off = ssd.generate(model, input_ids, method="hybrid", max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                       return_dict_in_generate=True, gguf_draft=None)
    assert "gguf" not in off.drafted_by_kind and off.tokens == out.tokens


@needs_llama_cpp
def test_auto_leaves_a_layer_skipping_draft_alone_and_a_named_gguf_joins_it(embedded, skip_layers, gguf):
    """Draft & Verify's setting (a skip set) keeps its self-draft, alone; a GGUF named by its path is offered beside it."""
    model, _ = embedded
    skip_layers([], [20, 21, 22])
    kinds = [type(p).__name__ for p in default_proposers(model, DraftConfig())]
    assert kinds == ["SelfDraft", "Lookup"]
    kinds = [type(p).__name__ for p in default_proposers(model, DraftConfig.of(gguf_draft=gguf))]
    assert kinds == ["SelfDraft", "GGUFDraft", "Lookup"]
    assert [type(p).__name__ for p in default_proposers(model, DraftConfig.of(gate=False))] == ["SelfDraft", "Lookup"]


@needs_llama_cpp
def test_llama_cpp_cache_follows_the_verifier(embedded, prompts, gguf):
    """After each step llama.cpp holds the committed sequence (rejected drafts gone), and over a generation it is fed
    each position about once: the prompt, then per step the tokens it lacks, never the sequence from the start."""
    model, tokenizer = embedded
    input_ids = tokenizer(prompts[0], return_tensors="pt").input_ids  # 12 of 69 drafts rejected (float32)
    draft = GGUFDraft.of(model, LONG, gguf)
    draft.llm.reset()
    fed = []
    evaluate = draft.llm.eval

    def counting_eval(tokens):
        fed.append(len(tokens))
        evaluate(tokens)

    draft.llm.eval = counting_eval
    try:
        result = speculative_decode(model, input_ids, MAX_NEW_TOKENS, None, LONG, None, None, proposers=[draft])
    finally:
        del draft.llm.eval
    sequence = input_ids[0].tolist() + result.tokens
    held = draft.llm.input_ids[: draft.llm.n_tokens].tolist()
    rejected = result.num_drafted_tokens - result.num_accepted_tokens
    assert held == sequence[: len(held)]  # the last step's drafts past the sequence were not fed, or were accepted
    # First the prompt, then one token at a time, or two (an accepted chain's last draft, not fed while
    # drafting, and the token after it).
    assert fed[0] == input_ids.shape[1] and all(n <= 2 for n in fed[1:])
    assert sum(fed) <= len(sequence) + result.num_drafted_tokens + 1 and rejected > 0


@needs_llama_cpp
def test_sampling_with_the_gguf_draft_keeps_the_distribution(embedded, gguf):
    """The 2nd token, drafted by llama.cpp (its probabilities as `q`) then verified, follows the full model's
    distribution (chi-square, 100 trials)."""
    model, tokenizer = embedded
    input_ids = tokenizer(SAMPLED_PROMPT, return_tensors="pt").input_ids
    assert second_token_p_value(model, input_ids, gguf, 100) > ALPHA


@needs_llama_cpp
def test_a_draft_whose_tokens_do_not_follow_its_q_is_detected(embedded, gguf, monkeypatch):
    """The negative control: a draft that reports llama.cpp's q but proposes its argmax. The same test must fail.

    (Accepting every draft, the control of `test_sampling`, is no control here: llama.cpp's q is the same
    weights' distribution, quantised, too close to the full model's for 100 trials to tell them apart.)"""
    model, tokenizer = embedded
    input_ids = tokenizer(SAMPLED_PROMPT, return_tensors="pt").input_ids
    monkeypatch.setattr(ssd.methods.gguf_draft, "sample", lambda q, generator: q.argmax())
    assert second_token_p_value(model, input_ids, gguf, 100) < ALPHA


def second_token_p_value(model, input_ids, gguf, trials: int) -> float:
    expected = exact_token_marginal(model, input_ids, SAMPLING, 2)
    config = DraftConfig.of(max_step_draft=1, th_stop_draft=0.0, auto_th_stop_draft=False, gate=False)
    generator = torch.Generator().manual_seed(1234)
    drafted = 0

    def draw() -> int:
        nonlocal drafted
        draft = GGUFDraft.of(model, config.self_draft, gguf)
        result = hybrid_generate(model, input_ids, 3, None, config, SAMPLING, generator, proposers=[draft])
        drafted += result.drafted_by_kind.get("gguf", 0)
        return result.tokens[1]

    counts = sample_counts(draw, expected, trials)
    assert drafted >= counts.sum()  # every trial's 2nd token was drafted by llama.cpp
    p_value = chi_square_p_value(counts, expected, trials)
    print(f"p-value {p_value:.3g} after {int(counts.sum())} of {trials} trials")
    return p_value


@needs_llama_cpp
@pytest.mark.parametrize("change, problem", [({"num_hidden_layers": 2}, "30 layers, the model 2"),
                                             ({"vocab_size": 1000}, "a vocabulary of 49152 tokens, the model 1000")])
def test_a_gguf_of_another_model_is_refused_before_decoding(gguf, change, problem):
    model = tiny_llama(**{"vocab_size": 49152, **change})
    with pytest.raises(ValueError, match=f"is not this model's GGUF: it has {problem}"):
        GGUFDraft.of(model, SelfDraftConfig(), gguf)


@needs_llama_cpp
def test_other_token_strings_are_refused(embedded, gguf, monkeypatch):
    model, tokenizer = embedded
    twin = tiny_llama(vocab_size=49152, num_hidden_layers=30)
    twin.tokenizer = tokenizer
    monkeypatch.setattr(tokenizer, "convert_ids_to_tokens", lambda ids: ["x" for _ in ids])
    with pytest.raises(ValueError, match="other token strings than the model's tokenizer"):
        GGUFDraft.of(twin, SelfDraftConfig(), gguf)


def test_without_llama_cpp_auto_drafts_nothing_and_a_path_says_why(embedded, monkeypatch, tmp_path):
    model, _ = embedded
    monkeypatch.setattr(ssd.methods.gguf_draft, "llama_cpp_installed", lambda: False)
    assert gguf_draft_proposers(model, SelfDraftConfig(), GGUFDraftConfig()) == []
    assert gguf_draft_proposers(model, SelfDraftConfig(), GGUFDraftConfig(None)) == []
    with pytest.raises(ValueError, match=r"the GGUF draft needs llama.cpp: pip install -e \".\[llama\]\""):
        gguf_draft_proposers(model, SelfDraftConfig(), GGUFDraftConfig(tmp_path / "model.gguf"))


def test_auto_finds_the_shipped_gguf_and_nothing_for_other_models(embedded, monkeypatch):
    assert own_gguf(embedded[0]).name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    anonymous = tiny_llama()
    anonymous.name_or_path = "/somewhere/else"
    assert own_gguf(anonymous) is None
    assert gguf_draft_proposers(anonymous, SelfDraftConfig(), GGUFDraftConfig()) == []
    # Found once per model: later generations do not look (or verify) again.
    monkeypatch.setattr(ssd.methods.gguf_draft, "named_gguf", lambda name: pytest.fail("looked up again"))
    assert own_gguf(embedded[0]).name == "SmolLM2-135M-Instruct.Q4_1.gguf" and own_gguf(anonymous) is None
