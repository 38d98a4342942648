"""Timing decoders side by side: the one harness behind the bench, the notebooks and the search's comparison.

Every prompt runs every method in turn (methods alternate per prompt), so
drift of a shared machine falls on all of them alike. Each method runs once
on a short prompt first, untimed, so first-call costs (allocations, kernel
choice) stay out of the figures. A call is timed by the harness, with the
device synchronised, so every method is timed the same way. The statistics
have one definition each (`tabulate_speed`):

- tokens/s: new tokens over wall seconds, summed over the prompts;
- speedup: a method's tokens/s over its baseline's on the same prompts
  (for fixed-length greedy runs, the ratio of summed times);
- matchness: accepted drafts over drafted tokens, pooled over the prompts;
- tokens per verification: new tokens over full-model verification passes;
- identical: prompts whose tokens equal the reference method's.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ssd.core.clock import timed
from ssd.generation import GenerateOutput, generate

WARM_UP_TASK = "warm-up"  # the task name methods see during the untimed warm-up


@dataclass
class Run:
    """What one generation produced: its new tokens, and its drafting figures where it drafts."""

    tokens: list[int]
    drafted: int | None = None
    accepted: int | None = None
    looked_up: int | None = None
    verifications: int | None = None
    extra: dict = field(default_factory=dict)  # method-specific fields for the record (completion, SWIFT statistics...)

    @classmethod
    def of(cls, out: GenerateOutput, drafts: bool = True, **extra) -> Run:
        """From `ssd.generate`'s result, with its drafted and accepted tokens by kind of step in `extra`;
        `drafts=False` (plain decoding) leaves the drafting figures out."""
        if not drafts:
            return cls(list(out.tokens), extra=extra)
        by_kind = {"drafted_by_kind": dict(out.drafted_by_kind), "accepted_by_kind": dict(out.accepted_by_kind)}
        return cls(list(out.tokens), out.num_drafted_tokens, out.num_accepted_tokens, out.num_looked_up_tokens,
                   out.num_verifications, {**by_kind, **extra})


Method = Callable[[torch.Tensor, str], Run]  # (input_ids [1, T], task) -> Run


def generate_method(model, method: str, max_new_tokens: int, **kwargs) -> Method:
    """`ssd.generate` as a harness method: exactly `max_new_tokens` tokens (no stop at EOS), greedy unless
    `kwargs` say `do_sample=True`, so a checkpoint's own sampling defaults (LLaMA-2's `do_sample: true`)
    never turn a greedy comparison into sampling; SWIFT's statistics go into the record where it ran."""
    kwargs = {"do_sample": False, **kwargs}

    def run(input_ids, task):
        out = generate(model, input_ids, method=method, max_new_tokens=max_new_tokens, eos_token_id=[],
                       return_dict_in_generate=True, **kwargs)
        # SWIFT's statistics without its per-step history (the optimiser keeps that).
        extra = {"swift": {k: v for k, v in out.swift.items() if k != "history"}} if out.swift is not None else {}
        return Run.of(out, drafts=method != "base", **extra)

    return run


def time_call(method: Method, input_ids: torch.Tensor, task: str) -> tuple[Run, float]:
    """One call and its wall seconds, the device synchronised before and after."""
    return timed(lambda: method(input_ids, task), input_ids.device)


def run_side_by_side(
    prompts: list[tuple[str, torch.Tensor]],
    methods: dict[str, Method],
    warm_up: torch.Tensor | None,
    reference: str | None = "base",
    compared: Collection[str] | None = None,
    repeats: dict[str, int] | None = None,
    progress: bool = True,
    on_prompt: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Every method on every (task, input_ids) prompt, alternating per prompt; one record per call.

    `warm_up`: ids each method runs once first, untimed, with task
    `WARM_UP_TASK` (None: no warm-up). `reference`: the method whose tokens
    others are compared with (`identical`; None: no comparison); `compared`:
    the methods compared with it (None: all; leave out sampled ones). `repeats`:
    calls per prompt for a method (samples for pass@k), default 1. `on_prompt`:
    called with each prompt's records once all its methods have run (to save them as they come).
    Record fields: prompt (index), task, method, sample, new_tokens, seconds,
    identical, tokens, the `Run`'s figures and its `extra`.
    """
    if not prompts:
        raise ValueError("no prompts to run")
    if not methods:
        raise ValueError("no methods to run")
    if reference is not None and reference not in methods:
        raise ValueError(f"the reference method {reference!r} is not among {list(methods)}")
    repeats = repeats or {}
    if warm_up is not None:
        for method in methods.values():
            method(warm_up, WARM_UP_TASK)
    records = []
    bar = tqdm(prompts, desc="prompts", disable=not progress)
    for index, (task, input_ids) in enumerate(bar):
        mine = []
        for name, method in methods.items():
            for sample in range(repeats.get(name, 1)):
                run, seconds = time_call(method, input_ids, task)
                mine.append(dict(
                    prompt=index, task=task, method=name, sample=sample, new_tokens=len(run.tokens), seconds=seconds,
                    drafted=run.drafted, accepted=run.accepted, looked_up=run.looked_up,
                    verifications=run.verifications, tokens=run.tokens, **run.extra,
                ))
        expected = next((r["tokens"] for r in mine if r["method"] == reference), None)
        for record in mine:
            checked = reference is not None and (compared is None or record["method"] in compared)
            record["identical"] = record["tokens"] == expected if checked else None
        if on_prompt is not None:
            on_prompt(mine)
        records += mine
        bar.set_postfix({r["method"]: f"{r['new_tokens'] / r['seconds']:.1f} tok/s" for r in mine if r["sample"] == 0})
    return records


def tokens_per_second(records: list[dict]) -> float:
    return sum(r["new_tokens"] for r in records) / sum(r["seconds"] for r in records)


def matchness(records: list[dict]) -> float | None:
    """Accepted drafts over drafted tokens, pooled; None for a method that does not draft."""
    drafted = sum(r["drafted"] or 0 for r in records)
    if all(r["drafted"] is None for r in records):
        return None
    return sum(r["accepted"] or 0 for r in records) / drafted if drafted else 0.0


def tokens_per_verification(records: list[dict]) -> float | None:
    verifications = sum(r["verifications"] or 0 for r in records)
    return sum(r["new_tokens"] for r in records) / verifications if verifications else None


def tabulate_speed(records: list[dict], baselines: dict[str, str] | None = None, default_baseline: str = "base",
              also_over: str | None = None) -> list[dict]:
    """One row per (task, method), then per method over all tasks ("all").

    `speedup`: tokens/s over the method's baseline's (`baselines[method]`,
    else `default_baseline`), on the same prompts. `also_over`: a second
    method to divide by (`speedup_vs_<name>`, e.g. stock generate).
    `identical`: how many of the method's generations equal the reference's
    tokens (None for methods not compared).
    """
    baselines = baselines or {}
    tasks = [*dict.fromkeys(r["task"] for r in records), "all"]
    methods = list(dict.fromkeys(r["method"] for r in records))
    rows = []
    for task in tasks:
        selected = [r for r in records if task in ("all", r["task"])]
        by_method = {m: [r for r in selected if r["method"] == m] for m in methods}
        speed = {m: tokens_per_second(rows_) for m, rows_ in by_method.items() if rows_}
        for method in methods:
            mine = by_method[method]
            if not mine:
                continue
            baseline = baselines.get(method, default_baseline)
            row = dict(
                task=task, method=method, prompts=len({r["prompt"] for r in mine}), new_tokens=sum(r["new_tokens"] for r in mine),
                seconds=sum(r["seconds"] for r in mine), tokens_per_second=speed[method],
                speedup=speed[method] / speed[baseline] if baseline in speed else None,
            )
            if also_over is not None:
                row[f"speedup_vs_{also_over}"] = speed[method] / speed[also_over] if also_over in speed else None
            row.update(
                matchness=matchness(mine), tokens_per_verification=tokens_per_verification(mine),
                drafted=None if all(r["drafted"] is None for r in mine) else sum(r["drafted"] or 0 for r in mine),
                identical=None if any(r["identical"] is None for r in mine) else sum(r["identical"] for r in mine),
            )
            rows.append(row)
    return rows
