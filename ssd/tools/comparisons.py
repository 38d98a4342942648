"""Side-by-side comparisons for the notebooks: skip sets against base (the search's held-out check), and
SWIFT against base and Draft & Verify. Both run on the one harness, `ssd.tools.timing`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ssd.core.draft import Draft
from ssd.core.modeling_llama import LlamaForCausalLM
from ssd.core.skip_layers import DEFAULT_PATH
from ssd.generation import encode_inputs
from ssd.methods.swift import SwiftConfig, SwiftOptimizer
from ssd.tools.prompts import WARM_UP
from ssd.tools.timing import Method, generate_method, run_side_by_side, tabulate_speed


def _prompts(tokenizer, prompts: dict[str, list[str]], device) -> list[tuple[str, torch.Tensor]]:
    return [(task, encode_inputs(p, tokenizer, device)) for task, texts in prompts.items() for p in texts]


def compare_skip_sets(
    model: LlamaForCausalLM,
    tokenizer,
    prompts: dict[str, list[str]],
    skip_sets: dict[str, tuple],
    max_new_tokens: int = 128,
    progress: bool = True,
    **draft_kwargs,
) -> list[dict]:
    """essg with each draft against base, alternating per prompt; one row per (draft, task) and per
    draft over all tasks ("all"). A draft is `(attention, mlp)`, at the model's draft precision, or
    `(attention, mlp, precision)`.

    Row fields: set, precision (the draft's: int8, int4, or the model's dtype for its own weights), task,
    prompts, speedup (over base), tokens_per_second,
    matchness, drafted (tokens), tokens_per_verification, identical (prompts
    whose output equals base's). Skip sets are compared on their own drafts:
    n-gram lookup and llama.cpp's GGUF draft are off unless `draft_kwargs` turn them on.
    """
    draft_kwargs = {"ngram_size": 0, "gguf_draft": None, **draft_kwargs}

    def draft_of(attention, mlp, precision=model.get_draft_precision()) -> Draft:
        return model.prepare_draft(Draft.skipping(attention, mlp, precision))

    drafts = {name: draft_of(*skip_set) for name, skip_set in skip_sets.items()}
    methods = {"base": generate_method(model, "base", max_new_tokens)}
    methods.update({name: generate_method(model, "essg", max_new_tokens, draft=draft, **draft_kwargs)
                    for name, draft in drafts.items()})
    warm_up = encode_inputs(WARM_UP, tokenizer, model.device)
    records = run_side_by_side(_prompts(tokenizer, prompts, model.device), methods, warm_up, progress=progress)
    weights = str(model.dtype).removeprefix("torch.")  # a draft at precision None runs the model's own weights
    rows = []
    for row in tabulate_speed(records):
        name = row.pop("method")
        if name != "base":
            rows.append({"set": name, "precision": drafts[name].precision or weights, **row})
    return rows


SWIFT_METHODS = ("base", "draft & verify", "swift cold", "swift cached", "clasp")


def compare_swift(
    model: LlamaForCausalLM,
    tokenizer,
    prompts: dict[str, list[str]],
    found_on: dict[str, list[str]],
    config: SwiftConfig = SwiftConfig(),
    max_new_tokens: int = 128,
    skip_layers_path: str | Path = DEFAULT_PATH,
    model_key: str | None = None,
    progress: bool = True,
    **draft_kwargs,
) -> tuple[list[dict], dict[str, SwiftOptimizer]]:
    """Greedy base, Draft & Verify (essg with the model's own skip set), SWIFT cold start, SWIFT
    cached and CLaSp-style selection (`ssd.methods.clasp`, cold: it keeps nothing between prompts), alternating
    per prompt of `prompts`.

    SWIFT's cached set is found first, per task, on other prompts (`found_on`: the search's rows, never
    measured): a cold optimiser decodes them in turn, until it stops optimising or they run out, saving its
    best set under the task's cache key after each. The cached method then reads that entry (`cache_hit=True`)
    at each prompt and optimises nothing. The cold start is one optimiser per task over the task's prompts,
    starting from nothing, that saves nothing, so the entry stays the one found on `found_on`.
    `draft_kwargs` (`DraftConfig` settings) apply to Draft & Verify (its self-draft: no GGUF draft unless they
    name one), clasp and SWIFT's draft.
    Returns one record per (prompt, method), with SWIFT's statistics, and each task's optimiser that found
    the cached set.
    """
    if set(found_on) != set(prompts):
        raise ValueError(f"found_on must have the tasks of prompts, {sorted(prompts)}; it has {sorted(found_on)}")
    shared = {task: n for task, texts in prompts.items() if (n := len(set(found_on[task]) & set(texts)))}
    if shared:
        raise ValueError(f"SWIFT's cached sets must be measured on prompts other than those they are found on; "
                         f"shared prompts per task: {shared}")
    config = dataclasses.replace(config, draft=config.draft.replace(**draft_kwargs))
    found = {}
    for task, texts in found_on.items():
        found[task] = SwiftOptimizer(model, config, task, False, skip_layers_path, model_key)
        finding = generate_method(model, "swift", max_new_tokens, swift=found[task])
        for text in texts:
            finding(encode_inputs(text, tokenizer, model.device), task)
            if not found[task].optimizing:
                break
    cold, cached = {}, {}

    def swift(streams: dict, cache_hit: bool) -> Method:
        def run(input_ids, task):
            if task not in streams:
                streams[task] = SwiftOptimizer(model, config, task if cache_hit else None, cache_hit, skip_layers_path,
                                               model_key)
            return generate_method(model, "swift", max_new_tokens, swift=streams[task])(input_ids, task)
        return run

    methods = {
        "base": generate_method(model, "base", max_new_tokens),
        "draft & verify": generate_method(model, "essg", max_new_tokens, **{"gguf_draft": None, **draft_kwargs}),
        "swift cold": swift(cold, False),
        "swift cached": swift(cached, True),
        "clasp": generate_method(model, "clasp", max_new_tokens, **draft_kwargs),
    }
    # The warm-up must not touch SWIFT's cache: only the plain methods warm up.
    warm_up = encode_inputs(WARM_UP, tokenizer, model.device)
    for name in ("base", "draft & verify"):
        methods[name](warm_up, "warm-up")
    records = run_side_by_side(_prompts(tokenizer, prompts, model.device), methods, None, progress=progress)
    for r in records:
        stats = r.pop("swift", None) or {}
        r.update(steps=stats.get("steps"), opt_steps=stats.get("opt_steps"), opt_seconds=stats.get("opt_seconds"),
                 opt_passes=stats.get("opt_passes"), budget_held=stats.get("budget_held"),
                 best_score=stats.get("best_score"), cache_hit=stats.get("cache_hit"))
    return records, found


def tabulate_swift(records: list[dict]) -> list[dict]:
    """`ssd.tools.timing.tabulate_speed`'s rows per (method, task) and over all tasks, plus SWIFT's optimisation shares:
    opt_share, the share of decoding steps preceded by an optimisation iteration, and opt_time_share, the
    share of the method's time spent in the optimiser."""
    rows = tabulate_speed(records)
    for row in rows:
        mine = [r for r in records if r["method"] == row["method"] and row["task"] in ("all", r["task"])]
        swift = row["method"].startswith("swift")
        steps = sum(r["steps"] or 0 for r in mine)
        row["opt_share"] = sum(r["opt_steps"] for r in mine) / steps if swift and steps else None
        row["opt_time_share"] = sum(r["opt_seconds"] for r in mine) / row["seconds"] if swift else None
    return sorted(rows, key=lambda row: SWIFT_METHODS.index(row["method"]))
