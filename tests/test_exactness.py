"""Greedy output of base, hybrid (the default method) and its paper setting equals stock transformers' greedy generate, token
for token (float32). The paper's `essg` against the reference code's loop: tests/test_reference.py."""

import pytest
import torch
from helpers import NEAR_TIE_FLOAT32, assert_same_tokens, random_skip_set, stock_greedy

import ssd
from ssd.core.skip_layers import hand_made_set
from ssd.methods.hybrid import TRIMMED_DRAFT_VOCAB
from ssd.methods.lookup import LookupConfig

MAX_NEW_TOKENS = 64
NUM_LAYERS = 30  # SmolLM2-135M; checked against the model below

SKIP_SETS = {
    "none": ([], []),
    "random40-seed0": random_skip_set(NUM_LAYERS, 0.4, seed=0),
    "random40-seed1": random_skip_set(NUM_LAYERS, 0.4, seed=1),
    "upper-half": hand_made_set(NUM_LAYERS),  # every other sub-layer of layers 15..28
}
THRESHOLDS = [0.2, 0.6, "adaptive"]
CONFIGS = [(skip, th) for skip in SKIP_SETS for th in THRESHOLDS]  # 12 combinations
# Two prompts of each task (conftest's `prompts`: 3 HumanEval, then 3 CNN/DM and 3 XSum with the shared
# data). Each runs two combinations, so every combination runs once.
PROMPT_INDICES = [0, 1, 3, 4, 6, 7]


def draft_kwargs(threshold, draft_vocab_size, ngram_size) -> dict:
    """Always draft (no gate): these tests check the draft/verify path itself."""
    kwargs = {"gate": False, "draft_vocab_size": draft_vocab_size, "ngram_size": ngram_size}
    if threshold == "adaptive":
        return kwargs | {"th_stop_draft": 0.6, "auto_th_stop_draft": True}
    return kwargs | {"th_stop_draft": threshold, "auto_th_stop_draft": False}


def assert_counts_add_up(out: dict, stopped_at_eos: bool) -> None:
    """The prefill commits one token and each verification its accepted drafts plus one of its own; only
    a stop at EOS cuts what was committed, and the last verification's token where the self-draft drafted
    with one token left (ungated, it drafts at least one token a step, as the reference code does)."""
    accepted = round(out["matchness"] * out["num_drafted_tokens"])
    committed = 1 + out["num_verifications"] + accepted
    new_tokens = len(out["generate_ids"])
    if stopped_at_eos:
        assert new_tokens <= committed, (new_tokens, committed)
    else:
        assert new_tokens <= committed <= new_tokens + 1, (new_tokens, committed)


def test_model_depth(embedded):
    assert embedded[0].num_layers == NUM_LAYERS


@pytest.mark.parametrize("index", range(len(PROMPT_INDICES)))
def test_base_and_hybrid_equal_stock_generate(embedded, stock, prompts, skip_layers, base_tokens, index):
    model, tokenizer = embedded
    input_ids = tokenizer(prompts[PROMPT_INDICES[index]], return_tensors="pt").input_ids
    expected = stock_greedy(stock, input_ids, MAX_NEW_TOKENS)

    # Past EOS there is no stock reference: the full-length base output is the reference.
    base = base_tokens(input_ids, MAX_NEW_TOKENS)
    assert len(base) == MAX_NEW_TOKENS
    # Stopping at EOS is a run of its own; where base meets no EOS it is the run above, token for token.
    base_early = (ssd.infer(model, tokenizer, input_ids, "base", MAX_NEW_TOKENS, early_stop=True)["generate_ids"]
                  if tokenizer.eos_token_id in base else base)
    assert_same_tokens(expected, base_early, model, input_ids, NEAR_TIE_FLOAT32, "base vs stock")

    # One run as the default drafts (hybrid: n-gram lookup, else the layer-skipping
    # draft through the trimmed head), one with the layer-skipping draft alone and the full head.
    runs = zip(
        (True, False),
        (CONFIGS[2 * index], CONFIGS[2 * index + 1]),
        ((TRIMMED_DRAFT_VOCAB, LookupConfig.ngram_size), (None, 0)),
    )
    for early_stop, (skip_name, threshold), (vocab, ngram_size) in runs:
        skip_layers(*SKIP_SETS[skip_name])
        kwargs = draft_kwargs(threshold, vocab, ngram_size)
        hybrid = ssd.infer(model, tokenizer, input_ids, "hybrid", MAX_NEW_TOKENS, early_stop=early_stop, **kwargs)
        label = f"hybrid[{skip_name}, th={threshold}, vocab={vocab}, ngram={ngram_size}, early_stop={early_stop}]"
        reference = expected if early_stop else base
        assert_same_tokens(reference, hybrid["generate_ids"], model, input_ids, NEAR_TIE_FLOAT32, label)
        assert_counts_add_up(hybrid, early_stop and hybrid["generate_ids"][-1:] == [tokenizer.eos_token_id])
        # Drafts must really have been made and checked, not bypassed: with the gate off every step
        # drafts at least one token (looked up, else from the layer-skipping draft), bar a last step
        # with room for none. With lookups off, all of them are the layer-skipping draft's.
        assert hybrid["num_drafted_tokens"] >= hybrid["num_verifications"] - 1
        if ngram_size == 0:
            assert hybrid["num_looked_up_tokens"] == 0


def test_adaptive_threshold_moves(embedded, prompts, skip_layers):
    """With a poor draft the adaptive threshold must rise from its start."""
    model, tokenizer = embedded
    skip_layers(*SKIP_SETS["random40-seed0"])
    out = ssd.infer(
        model, tokenizer, prompts[0], "hybrid", 32, th_stop_draft=0.6, auto_th_stop_draft=True, gate=False, ngram_size=0
    )
    assert out["matchness"] < 0.9
    assert out["th_stop_draft"] > 0.6


def test_full_model_draft_accepts_everything(embedded, prompts):
    """With nothing skipped the draft is the full model: essentially every draft is accepted."""
    model, tokenizer = embedded
    out = ssd.infer(
        model, tokenizer, prompts[3], "hybrid", 32, th_stop_draft=0.0, auto_th_stop_draft=False, max_step_draft=8,
        draft_vocab_size=None, gate=False, ngram_size=0,
    )
    assert out["matchness"] > 0.95
    assert out["num_verifications"] <= 32 / 8 + 2


def test_gated_hybrid_equals_base(embedded, prompts, skip_layers, base_tokens):
    """The default configuration (gate on) mixes plain and draft steps; output stays base's."""
    model, tokenizer = embedded
    skip_layers(*SKIP_SETS["upper-half"])
    for prompt in prompts[::3]:
        input_ids = tokenizer(prompt, return_tensors="pt").input_ids
        base = base_tokens(input_ids, MAX_NEW_TOKENS)
        hybrid = ssd.infer(model, tokenizer, input_ids, "hybrid", MAX_NEW_TOKENS)
        assert_same_tokens(base, hybrid["generate_ids"], model, input_ids, NEAR_TIE_FLOAT32, "gated hybrid")
        assert_counts_add_up(hybrid, stopped_at_eos=False)
        # The gate runs each kind of step the first time it is offered (no timing involved), so the
        # layer-skipping draft ran at least once, not only lookups.
        assert hybrid["num_drafted_tokens"] > hybrid["num_looked_up_tokens"]


def test_gate_never_drafts_with_the_full_model(embedded, prompts, skip_layers, base_tokens):
    """With no sub-layer skipped the gate only looks up or steps plainly (the draft would be the full model)."""
    model, tokenizer = embedded
    skip_layers([], [])
    input_ids = tokenizer(prompts[0], return_tensors="pt").input_ids
    base = base_tokens(input_ids, MAX_NEW_TOKENS)
    hybrid = ssd.infer(model, tokenizer, input_ids, "hybrid", MAX_NEW_TOKENS)
    assert_same_tokens(base, hybrid["generate_ids"], model, input_ids, NEAR_TIE_FLOAT32, "gated hybrid, no skip set")
    assert hybrid["drafted_by_kind"].get("draft", 0) == 0 < hybrid["num_looked_up_tokens"]


def test_hybrid_drafts_from_repeated_text(embedded, skip_layers):
    """Where the text repeats, most drafts are looked up, most are accepted, and output stays base's."""
    model, tokenizer = embedded
    skip_layers(*SKIP_SETS["upper-half"])
    prompt = "Repeat the list exactly.\nList: apple, river, candle, mountain, violin, tiger, cloud.\nAgain: apple, river,"
    input_ids = tokenizer(prompt, return_tensors="pt").input_ids
    base = ssd.infer(model, tokenizer, input_ids, "base", 24)["generate_ids"]
    hybrid = ssd.infer(model, tokenizer, input_ids, "hybrid", 24, gate=False, ngram_size=3)
    assert_same_tokens(base, hybrid["generate_ids"], model, input_ids, NEAR_TIE_FLOAT32, "hybrid")
    assert hybrid["num_looked_up_tokens"] >= 8
    assert hybrid["num_verifications"] < 24 / 2  # several tokens per verification


def test_short_lookups_grow_into_long_copies(embedded, skip_layers):
    """A lookup proposes `short_lookup` tokens until two in a row are accepted in full, then up to
    `max_step_draft`: a copy starts with short verifications, then goes many tokens per verification
    (2-token lookups alone would need at least 23 / 3), and output is base's for any setting."""
    model, tokenizer = embedded
    skip_layers(*SKIP_SETS["upper-half"])
    alphabet = " ".join("abcdefghijklmnopqrstuvwxyz")
    input_ids = tokenizer(f"{alphabet}\n{alphabet}\na b c d", return_tensors="pt").input_ids
    base = ssd.infer(model, tokenizer, input_ids, "base", 24)["generate_ids"]
    runs = {short: ssd.infer(model, tokenizer, input_ids, "hybrid", 24, gate=False, short_lookup=short)
            for short in (1, 2, None)}
    for short, run in runs.items():
        assert_same_tokens(base, run["generate_ids"], model, input_ids, NEAR_TIE_FLOAT32, f"short_lookup={short}")
    assert runs[None]["num_verifications"] < runs[2]["num_verifications"] < 23 / 3


@torch.no_grad()
def test_near_tie_margin_covers_the_measured_logit_differences(embedded, stock, prompts):
    """The margin under which a greedy divergence counts as a near-tie (NEAR_TIE_FLOAT32) is tied to what
    is measured here: a verification of 1-13 tokens and one-token steps give logits within half of it, and
    so do ssd's steps and stock transformers' forward. A flip between two of them needs the top two
    logits closer than the sum of their errors, so a divergence at a wider margin is a bug."""
    model, tokenizer = embedded
    input_ids = tokenizer(prompts[3], return_tensors="pt").input_ids
    start = input_ids.shape[1] - 13
    steps_cache, pass_cache = model.new_cache(input_ids.shape[1] + 1), model.new_cache(input_ids.shape[1] + 1)
    for cache in (steps_cache, pass_cache):
        model(input_ids[:, :start], cache, 0)
    steps = torch.cat([model(input_ids[:, i : i + 1], steps_cache, i) for i in range(start, input_ids.shape[1])], dim=1)
    stock_logits = stock(input_ids).logits[:, start:].float()
    worst = 0.0
    for rows in (1, 2, 4, 5, 8, 13):
        verified = model(input_ids[:, start : start + rows], pass_cache, start)
        worst = max(worst, float((verified - steps[:, :rows]).abs().max()))
    worst_stock = float((stock_logits - steps).abs().max())
    print(f"largest logit difference: verification vs steps {worst:.2e}, stock vs steps {worst_stock:.2e}")
    assert max(worst, worst_stock) < NEAR_TIE_FLOAT32 / 2
