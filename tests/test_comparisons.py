"""The notebooks' side-by-side comparisons (`ssd.tools.comparisons`), on the embedded model with small settings:
what search.ipynb and swift.ipynb tabulate, checked here rather than only through nbval."""

import pytest

import ssd
from ssd.core.skip_layers import hand_made_set, read_skip_layers
from ssd.loading.keys import model_key
from ssd.methods.swift import cache_key
from ssd.tools.comparisons import SWIFT_METHODS, compare_skip_sets, compare_swift, tabulate_swift
from ssd.tools.data import task_prompts

MAX_NEW_TOKENS = 16


@pytest.fixture(scope="module")
def humaneval(prompts):
    return {"humaneval": prompts[:2]}


def test_skip_sets_against_base(embedded, humaneval):
    model, tokenizer = embedded
    sets = {"none": ([], []), "hand-made": hand_made_set(model.num_layers), "int4": ([], [], "int4")}
    rows = compare_skip_sets(model, tokenizer, humaneval, sets, MAX_NEW_TOKENS, progress=False, gate=False)
    assert [(row["set"], row["task"]) for row in rows] == [(name, task) for task in ("humaneval", "all") for name in sets]
    by_set = {row["set"]: row for row in rows if row["task"] == "all"}
    for name, row in by_set.items():
        assert row["prompts"] == 2 and row["identical"] == 2, f"{name}: every output equals base's"
        assert row["drafted"] > 0 and row["new_tokens"] == 2 * MAX_NEW_TOKENS
    # The full model as its own draft agrees almost always; skipping 14 of 60 sub-layers does far less often.
    assert by_set["none"]["matchness"] >= 0.9 > by_set["hand-made"]["matchness"]
    # Each row names its draft's precision: the model's own weights (its dtype) unless the set names one.
    assert {name: row["precision"] for name, row in by_set.items()} == {
        "none": "float32", "hand-made": "float32", "int4": "int4"}
    assert model.default_draft == ssd.Draft(), "the comparison passes drafts as values, never setting the model's"


def test_swift_cold_and_cached_streams(embedded, humaneval, tmp_path):
    model, tokenizer = embedded
    path = tmp_path / "skip_layers.json"
    config = ssd.SwiftConfig(skip_ratio=0.2, context_window=8, max_opt_iter=6, max_score=1.0)
    found_on = {"humaneval": task_prompts("humaneval", 2, use="search")}
    with pytest.raises(ValueError, match=r"measured on prompts other than those they are found on.*'humaneval': 1"):
        compare_swift(model, tokenizer, humaneval, {"humaneval": [found_on["humaneval"][0], humaneval["humaneval"][1]]},
                      config, MAX_NEW_TOKENS, path, progress=False)
    records, found = compare_swift(model, tokenizer, humaneval, found_on, config, MAX_NEW_TOKENS, path, progress=False)
    assert sorted(r["method"] for r in records) == sorted(SWIFT_METHODS * 2)
    assert all(r["identical"] for r in records if r["method"] != "base"), "every method's output equals base's"
    # The cached set was found on the search's prompts, before and apart from the measured ones, and the
    # measured cold stream saved nothing over it: the cached stream read the found set at every prompt.
    finder = found["humaneval"]
    assert finder.inputs == 2 or (finder.inputs == 1 and not finder.optimizing), "found_on decodes until it stops"
    entry = read_skip_layers(path)[cache_key(model_key(model.name_or_path), "humaneval")]
    assert (entry["attention"], entry["mlp"]) == tuple(finder.best)
    cached = [r for r in records if r["method"] == "swift cached"]
    assert all(r["cache_hit"] and r["opt_steps"] == 0 and r["best_score"] == entry["score"] for r in cached)
    assert not any(r["cache_hit"] for r in records if r["method"] == "swift cold")

    rows = tabulate_swift(records)
    assert [row["method"] for row in rows if row["task"] == "all"] == list(SWIFT_METHODS)
    overall = {row["method"]: row for row in rows if row["task"] == "all"}
    cold_steps = sum(r["steps"] for r in records if r["method"] == "swift cold")
    cold_opt = sum(r["opt_steps"] for r in records if r["method"] == "swift cold")
    assert cold_opt > 0 and overall["swift cold"]["opt_share"] == cold_opt / cold_steps
    assert 0 < overall["swift cold"]["opt_time_share"] < 1
    assert overall["swift cached"]["opt_share"] == 0
    assert overall["base"]["opt_share"] is None and overall["base"]["speedup"] == 1.0
