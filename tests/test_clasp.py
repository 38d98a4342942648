"""CLaSp-style selection: the residual stream a verification keeps, the dynamic programming's states
against real draft passes, and `clasp` decoding, greedy identical to base and sampled exactly."""

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    ALPHA,
    NEAR_TIE_FLOAT32,
    SAMPLING,
    accept_everything,
    assert_same_tokens,
    chi_square_p_value,
    sample_counts,
)

import ssd
import ssd.core.decoding
from ssd.core.decoding import speculative_decode
from ssd.core.skip_layers import hand_made_set
from ssd.methods.clasp import ClaspConfig, ClaspDraft, SubLayerWeights, clasp_proposers, select_skip_set
from ssd.methods.hybrid import DraftConfig

EVERY_STEP = ClaspConfig(interval=1, budget=None)  # a selection before every clasp step


def clasp_only(model, config: DraftConfig, clasp: ClaspConfig = EVERY_STEP, start: ssd.Draft | None = None) -> list:
    """CLaSp's draft alone, starting from `start` (None: the model's default draft); with the gate off
    it would run after the static draft anyway."""
    start = model.default_draft if start is None else start
    return [ClaspDraft(model, start, config.self_draft.max_step_draft, config.self_draft.th_stop_draft, None, clasp)]


@torch.no_grad()
def test_hidden_states_are_the_residual_stream(embedded):
    model, tokenizer = embedded
    input_ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    logits, hidden = model(input_ids, model.new_cache(input_ids.shape[1]), 0, hidden_states=True)
    assert len(hidden) == model.num_layers + 1
    assert torch.equal(hidden[0], model.model.embed_tokens(input_ids))
    assert torch.equal(model.lm_head(model.model.norm(hidden[-1])).float(), logits)


@torch.no_grad()
@pytest.mark.parametrize("precision", [None, "int4"])
def test_selected_state_is_the_drafts_own(embedded, prompts, precision):
    """The selection's state for the draft it returns is what that draft computes at the position
    (over the full model's keys and values below it), to rounding; its cost fits the capacity, and
    the first and last layers run."""
    model, tokenizer = embedded
    input_ids = tokenizer(prompts[0], return_tensors="pt").input_ids
    position = input_ids.shape[1] - 1
    cache = model.new_cache(input_ids.shape[1])
    _, hidden = model(input_ids, cache, 0, hidden_states=True)
    weights = SubLayerWeights.of(model, 0.1)
    draft, similarity = select_skip_set(model, [h[0, -1] for h in hidden], cache, position, precision, weights)
    skipped = weights.attention * len(draft.attention) + weights.mlp * len(draft.mlp)
    assert 0 < skipped <= weights.capacity
    assert not {0, model.num_layers - 1} & (draft.attention | draft.mlp)
    assert draft.precision == precision
    _, draft_hidden = model(input_ids[:, -1:], cache, position, draft=draft, hidden_states=True)
    real = float(F.cosine_similarity(draft_hidden[-1][0, -1], hidden[-1][0, -1], dim=0))
    assert abs(real - similarity) < 1e-3, (real, similarity)
    assert 0.5 < similarity < 1.0


@pytest.mark.parametrize("precision", [None, "int4"])
def test_clasp_greedy_equals_base(embedded, prompts, base_tokens, precision):
    model, tokenizer = embedded
    model.set_draft_precision(precision)
    config = DraftConfig.of(gate=False, ngram_size=0)
    for prompt in prompts[::3]:
        input_ids = tokenizer(prompt, return_tensors="pt").input_ids
        proposers = clasp_only(model, config)
        result = speculative_decode(model, input_ids, 48, None, config.self_draft, None, None, proposers=proposers)
        assert proposers[0].selections >= 3
        assert_same_tokens(base_tokens(input_ids, 48), result.tokens, model, input_ids, NEAR_TIE_FLOAT32, "clasp")


def test_clasp_method_runs_with_the_gate_and_equals_base(embedded, prompts, base_tokens):
    model, tokenizer = embedded
    input_ids = tokenizer(prompts[1], return_tensors="pt").input_ids
    out = ssd.generate(model, input_ids, method="clasp", max_new_tokens=48, eos_token_id=[])
    assert_same_tokens(base_tokens(input_ids, 48), out[0, input_ids.shape[1]:].tolist(), model, input_ids,
                       NEAR_TIE_FLOAT32, "clasp, gated")
    kinds = [type(p).__name__ for p in clasp_proposers(model, DraftConfig())]
    assert kinds[:2] == ["SelfDraft", "ClaspDraft"]


def test_the_budget_holds_selections(embedded, prompts):
    """With no budget a selection runs every step; with budget 0 only the first (on credit) runs."""
    model, tokenizer = embedded
    input_ids = tokenizer(prompts[2], return_tensors="pt").input_ids
    config = DraftConfig.of(gate=False, ngram_size=0)
    counts = {}
    for budget in (None, 0.0):
        proposers = clasp_only(model, config, ClaspConfig(interval=1, budget=budget))
        speculative_decode(model, input_ids, 32, None, config.self_draft, None, None, proposers=proposers)
        counts[budget] = proposers[0].selections
    assert counts[0.0] == 1 < counts[None]


@pytest.mark.parametrize("kwargs", [{"skip_share": 0}, {"skip_share": 1.5}, {"interval": 0}, {"budget": -1}, {"budget": True}])
def test_bad_configs_are_refused(kwargs):
    with pytest.raises(ValueError):
        ClaspConfig(**kwargs)


# --- sampling ------------------------------------------------------------------------------

TRIALS = 100  # as in test_sampling.py; the broken acceptance rule below is caught with 50


def third_token_p_value(model, input_ids, expected, trials: int) -> float:
    """Chi-square p-value of the sampled 3rd token: the first step drafts the 2nd with the static set
    and keeps its verification's hidden states; when that draft is rejected, the second step drafts the
    3rd with the set selected from them."""
    generator = torch.Generator().manual_seed(1234)
    config = DraftConfig.of(max_step_draft=1, th_stop_draft=0.0, auto_th_stop_draft=False, gate=False, ngram_size=0)
    selections = 0
    often_rejected = ssd.Draft.skipping(*hand_made_set(model.num_layers))  # so that a second step drafts

    def draw() -> int:
        nonlocal selections
        proposers = clasp_only(model, config, start=often_rejected)
        result = speculative_decode(model, input_ids, 4, None, config.self_draft, SAMPLING, generator, proposers=proposers)
        selections += proposers[0].selections
        return result.tokens[2]

    counts = sample_counts(draw, expected, trials)
    if counts.sum() == trials:  # (sampling stops early only at a forbidden token: the verdict is settled)
        assert selections > trials / 4  # drafts from selected sets were really sampled
    return chi_square_p_value(counts, expected, trials)


def test_clasp_sampling_keeps_the_distribution(third_token_setting):
    assert third_token_p_value(*third_token_setting, TRIALS) > ALPHA


def test_clasp_broken_acceptance_rule_is_detected(third_token_setting, monkeypatch):
    monkeypatch.setattr(ssd.core.decoding, "verify_drafts", accept_everything)
    assert third_token_p_value(*third_token_setting, 50) < ALPHA
