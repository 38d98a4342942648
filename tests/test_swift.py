"""SWIFT: on-the-fly skip sets keep output exact, leave the cache as found, stop as told, and cache per task."""

import dataclasses
import json

import pytest
import torch
from helpers import (
    ALPHA,
    NEAR_TIE_FLOAT32,
    SAMPLING,
    accept_everything,
    assert_same_tokens,
    chi_square_p_value,
    sample_counts,
    stock_greedy,
)

import ssd
import ssd.core.decoding
from ssd.core.proposers import Step
from ssd.core.sampling import Sampling
from ssd.methods.swift import SwiftConfig, SwiftOptimizer, cache_key, swift_generate

MAX_NEW_TOKENS = 40
# Small windows and few iterations keep the tests fast; gate off so every step really drafts.
# max_score 1.0 never stops early (a score must pass it), so every run optimises.
FAST = SwiftConfig(skip_ratio=0.2, context_window=12, max_opt_iter=40, bayes_interval=5, max_score=1.0)


def fast_config() -> SwiftConfig:
    return dataclasses.replace(FAST, draft=dataclasses.replace(FAST.draft, gate=False))


@pytest.fixture
def clean_model(embedded):
    """The embedded model, drafting with the full model by default (conftest puts it back after a test)."""
    model, tokenizer = embedded
    assert model.default_draft == ssd.Draft()
    return model, tokenizer


# --- configuration -----------------------------------------------------------------


def test_defaults_are_the_papers():
    config = SwiftConfig()
    assert (config.opt_interval, config.bayes_interval, config.skip_ratio, config.context_window) == (1, 25, 0.45, 50)
    assert (config.max_score, config.max_tolerance_iter, config.max_opt_iter) == (0.93, 300, 1000)
    draft = config.draft.self_draft
    assert (draft.th_stop_draft, draft.max_step_draft, draft.auto_th_stop_draft) == (0.8, 25, False)
    assert config.num_skipped(30) == int(28 * 2 * 0.45)


@pytest.mark.parametrize("kwargs, name", [
    ({"skip_ratio": 0.0}, "skip_ratio"), ({"skip_ratio": 1.0}, "skip_ratio"), ({"context_window": 0}, "context_window"),
    ({"max_score": 1.5}, "max_score"), ({"opt_interval": 0}, "opt_interval"), ({"bayes_interval": 2.5}, "bayes_interval"),
    ({"max_opt_iter": -1}, "max_opt_iter"), ({"max_tolerance_iter": True}, "max_tolerance_iter"),
    ({"draft": {"th_stop_draft": 0.8}}, "draft"), ({"alpha": 0.0}, "alpha"),
])
def test_bad_config_names_the_value(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SwiftConfig(**kwargs)


def test_bad_arguments(clean_model, tmp_path):
    model, tokenizer = clean_model
    with pytest.raises(ValueError, match="cache_hit needs a task"):
        SwiftOptimizer(model, FAST, cache_hit=True)
    with pytest.raises(ValueError, match="task"):
        cache_key("smollm2", "a/b")
    with pytest.raises(ValueError, match="generate_fn='swift'"):
        ssd.infer(model, tokenizer, "Hi", "essg", 4, task="cnndm")
    optimizer = SwiftOptimizer(model, FAST)
    with pytest.raises(ValueError, match="fixed by the SwiftOptimizer"):
        ssd.infer(model, tokenizer, "Hi", "swift", 4, swift=optimizer, cache_hit=True)
    with pytest.raises(ValueError, match="SwiftConfig"):
        ssd.infer(model, tokenizer, "Hi", "swift", 4, swift={"skip_ratio": 0.2})


# --- candidates, cache, stopping ---------------------------------------------------------


def test_candidates_have_the_fixed_size_and_keep_first_and_last_layers(clean_model):
    model, _ = clean_model
    optimizer = SwiftOptimizer(model, SwiftConfig(bayes_interval=3, skip_ratio=0.3))
    size, last = optimizer.num_skipped, model.num_layers - 1
    assert size == int((model.num_layers - 2) * 2 * 0.3)
    kinds = set()
    for i in range(9):  # iterations 3, 6 and 9 are Gaussian-process proposals
        params, (attention, mlp) = optimizer._propose()
        kinds.add(set(params.values()) <= {0.0, 1.0})
        assert len(attention) + len(mlp) == size
        assert not {0, last} & set(attention + mlp)
        assert len(set(attention)) == len(attention) and len(set(mlp)) == len(mlp)
        optimizer.gp.register(params=params, target=float(i % 4) / 4)
        optimizer.iterations += 1
    assert kinds == {True, False}  # both random (0/1) and Bayesian (real-valued) proposals ran


@torch.no_grad()
def test_scoring_leaves_the_cache_as_found(clean_model, prompts):
    """An optimisation step scores on its own scratch cache: the generation's cache is only read, and stays
    bit for bit as it was, committed positions and the rest."""
    model, tokenizer = clean_model
    input_ids = tokenizer(prompts[0], return_tensors="pt").input_ids
    generated = ssd.base_generate(model, input_ids, 10).tokens
    sequence = torch.cat([input_ids[0], torch.tensor(generated[:-1])])[None]
    cache = model.new_cache(sequence.shape[1] + 8)
    model(sequence, cache, 0)  # the full model's cache for prompt + all but the last token
    committed = sequence.shape[1]
    before = [(k.clone(), v.clone()) for k, v in zip(cache.keys, cache.values)]
    optimizer = SwiftOptimizer(model, FAST)
    optimizer.begin_input()
    optimizer.optimize(step_at(model, cache, committed, generated))
    assert optimizer.iterations == 1 and optimizer.history[-1].window == 9
    for (k, v), (k0, v0) in zip(zip(cache.keys, cache.values), before):
        assert torch.equal(k, k0) and torch.equal(v, v0)
    assert model.get_skip_layers() == ([], []), "the optimiser never changes the model's draft"
    # The score is the teacher-forced draft's agreement with the generated text: recomputed here,
    # the best set drafting generated[:9] over a copy of the cache, against generated[1:].
    scratch = ssd.KVCache([k.clone() for k in cache.keys], [v.clone() for v in cache.values])
    logits = model(torch.tensor([generated[:9]]), scratch, input_ids.shape[1], draft=optimizer.draft())[0]
    assert optimizer.best_score == float((logits.argmax(-1) == torch.tensor(generated[1:10])).float().mean())


def step_at(model, cache, committed: int, tokens: list[int]) -> Step:
    """The decoding step after `tokens` were generated, `committed` positions in the cache."""
    prompt_length = committed - (len(tokens) - 1)
    return Step(model, cache, [0] * prompt_length + list(tokens), prompt_length, committed, 4, None, None)


def run_scores(model, config, scores, window_tokens=20):
    """Drive the optimiser's stopping rules with scripted scores (no forward passes), unbudgeted."""
    optimizer = SwiftOptimizer(model, dataclasses.replace(config, opt_budget=None))
    values = iter(scores)
    optimizer.score = lambda *args: next(values)
    optimizer.begin_input()
    tokens = list(range(window_tokens))
    while optimizer.optimizing:
        optimizer.optimize(step_at(model, None, 100, tokens))
    return optimizer


def test_stopping_rules(clean_model):
    model, _ = clean_model
    # max_opt_iter: improving every time, never good enough.
    improving = (i / 1000 for i in range(1000))
    optimizer = run_scores(model, SwiftConfig(max_opt_iter=7, context_window=10), improving)
    assert (optimizer.stop_reason, optimizer.iterations) == ("max_opt_iter", 7)
    # max_tolerance_iter: one good score, then none better.
    flat = iter([0.5] + [0.1] * 100)
    optimizer = run_scores(model, SwiftConfig(max_tolerance_iter=4, context_window=10), flat)
    assert (optimizer.stop_reason, optimizer.iterations, optimizer.best_score) == ("max_tolerance_iter", 5, 0.5)
    # max_score: passes it over a full window.
    optimizer = run_scores(model, SwiftConfig(max_score=0.9, context_window=10), iter([0.5, 0.95, 0.1]))
    assert (optimizer.stop_reason, optimizer.iterations, optimizer.best_score) == ("max_score", 2, 0.95)
    # Steps after stopping are not optimisation steps.
    optimizer.optimize(step_at(model, None, 100, list(range(20))))
    assert not optimizer.history[-1].optimized and optimizer.history[-2].optimized


def test_max_score_counts_only_over_a_full_window(clean_model):
    """A perfect score over 3 tokens says little: optimisation goes on until the window is full."""
    model, _ = clean_model
    optimizer = SwiftOptimizer(model, SwiftConfig(context_window=10, max_score=0.9, opt_budget=None))
    optimizer.score = lambda *args: 1.0
    optimizer.begin_input()
    optimizer.optimize(step_at(model, None, 100, list(range(4))))
    assert optimizer.optimizing and optimizer.best_score == 1.0
    optimizer.optimize(step_at(model, None, 100, list(range(11))))
    assert optimizer.stop_reason == "max_score"


def plain_outcome_cost(optimizer, seconds: float) -> None:
    """The gate has measured a plain step at `seconds`."""
    optimizer.gate.record("plain", ["plain"], 1, seconds)


def test_the_budget_holds_optimisation_until_drafting_has_saved_for_it(clean_model):
    """Greedy: an iteration runs while the seconds spent optimising are at most opt_budget x the seconds
    non-plain steps saved against a plain step; the first runs on credit."""
    model, _ = clean_model
    optimizer = SwiftOptimizer(model, SwiftConfig(context_window=10, opt_budget=0.5))
    optimizer.score = lambda *args: 0.5
    optimizer.begin_input()
    plain_outcome_cost(optimizer, 0.02)
    step = step_at(model, None, 100, list(range(20)))
    optimizer.optimize(step)
    assert optimizer.iterations == 1 and optimizer.budget.spent > 0
    optimizer.optimize(step)
    assert optimizer.iterations == 1 and optimizer.history[-1].held, "nothing saved yet: held"
    # A draft step committed 3 tokens for 0.03 s: it saved 3 x 0.02 - 0.03 = 0.03 s.
    draft = ssd.core.proposers.Outcome("draft", None, 2, [1, 2, 3], 0.03)
    optimizer.credit(draft, sampling=False)
    assert optimizer.budget.saved == pytest.approx(0.03)
    optimizer.budget.spent = 0.015  # pretend the first iteration took 15 ms: within 0.5 x 0.03
    optimizer.optimize(step)
    assert optimizer.iterations == 2 and not optimizer.history[-1].held
    # A plain step saves nothing; a losing draft step takes back what it lost.
    optimizer.credit(ssd.core.proposers.Outcome("plain", None, 0, [4], 0.02), sampling=False)
    optimizer.credit(ssd.core.proposers.Outcome("swift", None, 0, [5], 0.05), sampling=False)
    assert optimizer.budget.saved == pytest.approx(0.03 - 0.03)
    stats = optimizer.stats()
    assert (stats["opt_steps"], stats["budget_held"], stats["opt_passes"]) == (2, 1, 2)
    # Unbudgeted (the paper's), and with the gate off, nothing is held.
    for config in (SwiftConfig(context_window=10, opt_budget=None),
                   SwiftConfig(context_window=10, draft=dataclasses.replace(FAST.draft, gate=False))):
        free = SwiftOptimizer(model, config)
        free.score = lambda *args: 0.5
        free.begin_input()
        for _ in range(3):
            free.optimize(step)
        assert free.iterations == 3


def test_the_budget_counts_passes_when_sampling(clean_model):
    """Sampling: the budget is kept in model passes, so which steps optimise never depends on timing."""
    model, _ = clean_model
    optimizer = SwiftOptimizer(model, SwiftConfig(context_window=10))
    optimizer.score = lambda *args: 0.5
    optimizer.begin_input()
    sampled = dataclasses.replace(step_at(model, None, 100, list(range(20))), sampling=Sampling())
    optimizer.optimize(sampled)
    share = 1 - optimizer.num_skipped / (2 * model.num_layers)  # one scoring pass of the full-precision model
    assert optimizer.budget.spent == pytest.approx(share)
    optimizer.credit(ssd.core.proposers.Outcome("draft", None, 3, [1, 2, 3, 4], 2.5), sampling=True)
    assert optimizer.budget.saved == pytest.approx(4 - 2.5)


def test_cold_swift_decodes_with_the_static_draft_until_it_has_a_set(clean_model, prompts, base_tokens):
    """Gate on: before any candidate is scored only the static draft (here int8, nothing skipped), lookups
    and plain steps run; SWIFT's set then competes as the kind "swift". Output stays base's."""
    model, tokenizer = clean_model
    model.set_draft_precision("int8")
    input_ids = tokenizer(prompts[0], return_tensors="pt").input_ids
    base = base_tokens(input_ids, 40)
    optimizer = SwiftOptimizer(model, dataclasses.replace(FAST, max_opt_iter=1000))
    kinds = []
    recorded = optimizer.gate.record
    optimizer.gate.record = lambda kind, *args: (kinds.append((kind, optimizer.iterations)), recorded(kind, *args))
    out = ssd.infer(model, tokenizer, input_ids, "swift", 40, swift=optimizer)
    assert out["generate_ids"] == base
    assert "draft" in optimizer.gate.seconds and all(iterations > 0 for kind, iterations in kinds if kind == "swift")
    stats = out["swift"]
    assert stats["opt_steps"] >= 1 and stats["opt_passes"] >= stats["opt_steps"]
    # Never more than one iteration beyond the budget.
    last = max(s.seconds for s in optimizer.history)
    assert stats["spent"] <= FAST.opt_budget * max(stats["saved"], 0) + last
    assert model.default_draft == ssd.Draft(precision="int8")  # SWIFT never changes the model's draft


# --- exactness -----------------------------------------------------------------------------


# A HumanEval prompt with the trimmed draft head and, with the shared data, a CNN/DM one with the full head.
@pytest.mark.parametrize("index, vocab", [(0, ssd.SelfDraftConfig.draft_vocab_size), (3, None)])
def test_swift_greedy_equals_stock_generate(clean_model, stock, prompts, index, vocab):
    model, tokenizer = clean_model
    input_ids = tokenizer(prompts[index], return_tensors="pt").input_ids
    expected = stock_greedy(stock, input_ids, MAX_NEW_TOKENS)
    out = ssd.infer(model, tokenizer, input_ids, "swift", MAX_NEW_TOKENS, early_stop=True, swift=fast_config(),
                    draft_vocab_size=vocab)
    assert_same_tokens(expected, out["generate_ids"], model, input_ids, NEAR_TIE_FLOAT32, f"swift vocab={vocab}")
    stats = out["swift"]
    assert out["num_drafted_tokens"] > 0 and stats["opt_steps"] > 0
    assert stats["steps"] == out["num_verifications"] and len(stats["history"]) == stats["steps"]
    assert model.get_skip_layers() == ([], [])  # the model's own draft is never changed


def test_swift_stream_with_bayesian_proposals_equals_base(clean_model, prompts, base_tokens):
    """One optimiser over several prompts (its set carries over), Gaussian-process proposals included."""
    model, tokenizer = clean_model
    optimizer = SwiftOptimizer(model, fast_config())
    for prompt in prompts[:2]:
        input_ids = tokenizer(prompt, return_tensors="pt").input_ids
        base = base_tokens(input_ids, 24)
        out = ssd.infer(model, tokenizer, input_ids, "swift", 24, swift=optimizer)
        assert_same_tokens(base, out["generate_ids"], model, input_ids, NEAR_TIE_FLOAT32, "swift stream")
    assert optimizer.iterations >= FAST.bayes_interval
    assert optimizer.history[-1].input == 1


# --- sampling ------------------------------------------------------------------------------

TRIALS = 100  # as in test_sampling.py; the broken acceptance rule below is caught with 50


def third_token_p_value(model, input_ids, expected, trials: int) -> float:
    """Chi-square p-value of the sampled 3rd token. When the first draft is rejected, the second step
    first scores a candidate (on its scratch cache), then drafts the 3rd token with the best set."""
    generator = torch.Generator().manual_seed(1234)
    optimizer = SwiftOptimizer(model, SwiftConfig(
        skip_ratio=0.2, context_window=4, bayes_interval=10_000, max_opt_iter=10_000, max_tolerance_iter=10_000,
        draft=ssd.DraftConfig.of(max_step_draft=1, th_stop_draft=0.0, auto_th_stop_draft=False, gate=False),
    ))
    counts = sample_counts(lambda: swift_generate(model, input_ids, 4, None, optimizer, SAMPLING, generator).tokens[2],
                           expected, trials)
    if counts.sum() == trials:  # (sampling stops early only at a forbidden token: the verdict is settled)
        assert optimizer.iterations > trials / 10  # the optimiser really ran between steps
    return chi_square_p_value(counts, expected, trials)


def test_swift_sampling_keeps_the_distribution(third_token_setting):
    assert third_token_p_value(*third_token_setting, TRIALS) > ALPHA


def test_swift_broken_acceptance_rule_is_detected(third_token_setting, monkeypatch):
    monkeypatch.setattr(ssd.core.decoding, "verify_drafts", accept_everything)
    assert third_token_p_value(*third_token_setting, 50) < ALPHA


# --- cache hit -----------------------------------------------------------------------------


def test_best_set_is_saved_and_reused(clean_model, prompts, tmp_path, base_tokens):
    model, tokenizer = clean_model
    path = tmp_path / "skip_layers.json"
    path.write_text(json.dumps({"other-model": {"attention": [1], "mlp": [2]}}))
    input_ids = tokenizer(prompts[0], return_tensors="pt").input_ids
    base = base_tokens(input_ids, 24)

    # A cache miss optimises (cache_hit asked, no entry yet) and saves, keeping the other entry.
    cold = ssd.infer(model, tokenizer, input_ids, "swift", 24, swift=FAST, task="humaneval", cache_hit=True,
                     skip_layers_path=path)
    assert cold["generate_ids"] == base and not cold["swift"]["cache_hit"] and cold["swift"]["opt_steps"] > 0
    entries = json.loads(path.read_text())
    key = "smollm2-135m-instruct/swift/humaneval"
    assert set(entries) == {"other-model", key}
    assert [entries[key]["attention"], entries[key]["mlp"]] == [sorted(x) for x in cold["swift"]["skip_layers"]]
    assert entries[key]["score"] == round(cold["swift"]["best_score"], 4) and entries[key]["iterations"] > 0

    # A cache hit decodes with the stored set and optimises nothing.
    hit = ssd.infer(model, tokenizer, input_ids, "swift", 24, swift=FAST, task="humaneval", cache_hit=True,
                    skip_layers_path=path)
    assert hit["generate_ids"] == base
    assert hit["swift"]["cache_hit"] and hit["swift"]["opt_steps"] == 0 and hit["swift"]["iterations"] == 0
    assert hit["swift"]["skip_layers"] == (entries[key]["attention"], entries[key]["mlp"])
    assert json.loads(path.read_text()) == entries  # nothing rewritten

    # Without cache_hit the stored set is not used: optimisation runs again.
    again = ssd.infer(model, tokenizer, input_ids, "swift", 24, swift=FAST, task="humaneval", skip_layers_path=path)
    assert not again["swift"]["cache_hit"] and again["swift"]["opt_steps"] > 0


def test_a_cached_stream_reads_the_entry_at_each_input_and_keeps_its_gate(clean_model, prompts, tmp_path, base_tokens):
    model, tokenizer = clean_model
    path = tmp_path / "skip_layers.json"
    key = cache_key("smollm2-135m-instruct", "qa")
    ssd.save_skip_layers(key, [3], [5], path=path)
    stream = SwiftOptimizer(model, FAST, "qa", cache_hit=True, skip_layers_path=path)
    input_ids = tokenizer(prompts[0], return_tensors="pt").input_ids
    base = base_tokens(input_ids, 24)

    first = ssd.infer(model, tokenizer, input_ids, "swift", 24, swift=stream)
    assert first["generate_ids"] == base and first["swift"]["skip_layers"] == ([3], [5])
    gate = stream.gate
    assert "swift" in gate.seconds  # measured during the first input
    measured = dict(gate.seconds)

    # The same set: the gate keeps what it measured (the next input need not try the draft again).
    ssd.infer(model, tokenizer, input_ids, "swift", 24, swift=stream)
    assert stream.gate is gate and set(measured) <= set(gate.seconds)

    # Another process improved the entry: the next input drafts with it, measured afresh.
    ssd.save_skip_layers(key, [3, 7], [5], path=path)
    forgotten = []
    original = gate.forget
    gate.forget = lambda kind: (forgotten.append(kind), original(kind))
    third = ssd.infer(model, tokenizer, input_ids, "swift", 24, swift=stream)
    assert third["generate_ids"] == base and third["swift"]["skip_layers"] == ([3, 7], [5])
    assert forgotten == ["swift"] and third["swift"]["opt_steps"] == 0


def test_a_given_gate_needs_gating_on(clean_model):
    model, tokenizer = clean_model
    input_ids = tokenizer("Hello", return_tensors="pt").input_ids
    with pytest.raises(ValueError, match="gate is False"):
        ssd.methods.hybrid.hybrid_generate(
            model, input_ids, 4, None, ssd.DraftConfig.of(gate=False), gate=ssd.methods.gate.DraftGate()
        )
