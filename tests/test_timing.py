"""The one timing harness: methods alternate per prompt, each statistic has one definition, and it adds up."""

import time

import pytest
import torch

from ssd.tools.timing import WARM_UP_TASK, Run, run_side_by_side, tabulate_speed


def record(prompt, task, method, seconds, identical=True, verifications=None, drafted=None, accepted=None):
    return dict(prompt=prompt, task=task, method=method, seconds=seconds, new_tokens=10, identical=identical,
                verifications=verifications, drafted=drafted, accepted=accepted)


def test_summary_ratios_are_of_summed_times_and_pooled_counts():
    records = [
        record(0, "a", "hf", 4.0), record(0, "a", "base", 2.0), record(0, "a", "essg", 1.0, True, 4, 8, 6),
        record(1, "b", "hf", 6.0), record(1, "b", "base", 3.0), record(1, "b", "essg", 3.0, False, 10, 2, 0),
    ]
    rows = {(r["task"], r["method"]): r for r in tabulate_speed(records, also_over="hf")}
    assert rows["a", "essg"]["speedup"] == 2.0 and rows["a", "essg"]["speedup_vs_hf"] == 4.0
    assert rows["all", "essg"]["speedup"] == 5.0 / 4.0
    assert rows["all", "essg"]["tokens_per_verification"] == 20 / 14
    # Pooled: (6 + 0) / (8 + 2), not the mean of 0.75 and 0.
    assert rows["all", "essg"]["matchness"] == 6 / 10
    assert rows["a", "essg"]["identical"] == 1 and rows["all", "essg"]["identical"] == 1
    assert rows["all", "base"]["matchness"] is None and rows["all", "hf"]["speedup_vs_hf"] == 1.0


def test_speedup_is_over_each_methods_own_baseline():
    records = [record(0, "a", "base", 2.0), record(0, "a", "base sample", 4.0), record(0, "a", "sss", 2.0, None, 5, 5, 1)]
    rows = {r["method"]: r for r in tabulate_speed(records, baselines={"sss": "base sample"}) if r["task"] == "all"}
    assert rows["sss"]["speedup"] == 2.0 and rows["base sample"]["speedup"] == 0.5
    assert rows["sss"]["identical"] is None


def test_methods_alternate_per_prompt_after_an_untimed_warm_up():
    calls = []

    def method(name, tokens):
        def run(input_ids, task):
            calls.append((name, task))
            time.sleep(0.02 if name == "other" else 0)
            return Run(tokens(input_ids), drafted=4, accepted=3, verifications=2)
        return run

    prompts = [("a", torch.tensor([[1, 2]])), ("b", torch.tensor([[3]]))]
    methods = {"base": method("base", lambda ids: ids[0].tolist()),
               "copy": method("copy", lambda ids: ids[0].tolist()),
               "other": method("other", lambda ids: [0])}
    records = run_side_by_side(prompts, methods, torch.tensor([[9]]), repeats={"other": 2}, compared=["copy"],
                               progress=False)
    assert calls == [("base", WARM_UP_TASK), ("copy", WARM_UP_TASK), ("other", WARM_UP_TASK),
                     ("base", "a"), ("copy", "a"), ("other", "a"), ("other", "a"),
                     ("base", "b"), ("copy", "b"), ("other", "b"), ("other", "b")]
    assert [r["sample"] for r in records if r["method"] == "other"] == [0, 1, 0, 1]
    assert all(r["seconds"] >= 0.02 for r in records if r["method"] == "other"), "the harness times the call"
    assert [r["identical"] for r in records if r["method"] == "copy"] == [True, True]
    assert all(r["identical"] is None for r in records if r["method"] != "copy")
    assert [r["new_tokens"] for r in records if r["method"] == "base"] == [2, 1]


def test_reference_must_be_a_method():
    with pytest.raises(ValueError, match="reference method 'base'"):
        run_side_by_side([("a", torch.tensor([[1]]))], {"essg": lambda ids, task: Run([1])}, None)
