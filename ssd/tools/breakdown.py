"""Where a greedy generation's time goes, by kind of step: `python -m ssd.tools.breakdown`.

For each method, on the bench's prompts: how many steps of each kind the gate ran, the tokens each
committed per verification, their wall time, and what a verification of n rows cost when its proposal
took no pass (plain steps, lookups, recycled trees), so that a draft step's time splits into its draft
passes and its verification. What is left of the wall time (the prefill, the proposers' offers and
bookkeeping, the loop) is shown as one line. First it times full-model passes of 1 to 64 rows on the
first prompt: what rows cost on this machine.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from ssd.core.clock import timed
from ssd.core.decoding import prefill, speculative_decode
from ssd.core.proposers import Outcome, Proposal, Step
from ssd.loading.model import load_model
from ssd.methods.gguf_draft import GGUFDraft
from ssd.methods.hybrid import DraftConfig, gate_of, hybrid_generate
from ssd.methods.registry import DRAFTING_METHODS
from ssd.tools.prompts import CHAT_TASKS, PROMPTS_FILE, encode, read_prompts_file


@dataclass
class StepLog:
    """A proposer that proposes nothing and records every step's outcome: (kind's name, rows verified,
    tokens committed, wall seconds, whether its proposal cost no pass)."""

    steps: list[tuple[str, int, int, float, bool]] = field(default_factory=list)

    def offer(self, step: Step) -> list:
        return []

    def propose(self, kind, step: Step) -> Proposal:
        raise AssertionError("a StepLog offers nothing")

    def observe(self, outcome: Outcome, step: Step) -> None:
        proposal = outcome.proposal
        name = outcome.kind[0] if isinstance(outcome.kind, tuple) else outcome.kind
        if proposal is not None and proposal.tree is not None:
            name += " (tree)"
        rows = 1 + (len(proposal.tokens) if proposal else 0)
        free = proposal is None or proposal.passes == 0
        self.steps.append((name, rows, len(outcome.new_tokens), outcome.cost, free))


def breakdown(model, prompts: list[torch.Tensor], method: str, max_new_tokens: int) -> tuple[list[dict], dict]:
    """Rows by kind of step, and verification seconds by rows verified, for `method` over `prompts`."""
    log, wall, prefills, tokens, gguf_times = StepLog(), 0.0, 0.0, 0, []
    for input_ids in prompts:
        prefills += timed(lambda: prefill(model, input_ids, model.new_cache(input_ids.shape[1])), model.device)[1]
        proposers = DRAFTING_METHODS[method].proposers(model, DraftConfig(), None)
        result, seconds = timed(lambda: speculative_decode(model, input_ids, max_new_tokens, None, DraftConfig().self_draft, None,
                                                           None, proposers=[*proposers, log], gate=gate_of(DraftConfig())),
                                model.device)
        wall += seconds
        tokens += len(result.tokens)
        gguf_times += [proposer.spent for proposer in proposers if isinstance(proposer, GGUFDraft)]
    by_rows = defaultdict(list)
    for _, rows, _, seconds, free in log.steps:
        if free:
            by_rows[rows].append(seconds)
    verification = {rows: statistics.median(s) for rows, s in sorted(by_rows.items())}
    kinds = defaultdict(list)
    for step in log.steps:
        kinds[step[0]].append(step)
    table = []
    for name, steps in kinds.items():
        seconds = sum(s[3] for s in steps)
        verifying = sum(nearest(verification, s[1]) for s in steps)
        table.append({"kind": name, "steps": len(steps), "rows_per_step": sum(s[1] for s in steps) / len(steps),
                      "tokens_per_step": sum(s[2] for s in steps) / len(steps), "ms_per_step": 1000 * seconds / len(steps),
                      "share_of_time": seconds / wall, "of_which_proposing": max(0.0, 1 - verifying / seconds)})
    stepped = sum(s[3] for s in log.steps)
    table.append({"kind": "prefill, offers, bookkeeping", "steps": len(prompts), "share_of_time": (wall - stepped) / wall,
                  "ms_per_step": 1000 * (wall - stepped) / len(prompts)})
    summary = {"method": method, "tokens_per_second": tokens / wall, "prefill_share": prefills / wall,
               "tokens_per_verification": tokens / len(log.steps)}
    extra = {"summary": summary, "verification_ms_by_rows": {r: 1000 * s for r, s in verification.items()}}
    if steps := sum(t.steps for t in gguf_times):
        following, drafting = sum(t.following for t in gguf_times), sum(t.drafting for t in gguf_times)
        drafted = sum(t.tokens for t in gguf_times)
        extra["gguf_draft"] = {"following_ms_per_step": 1000 * following / steps,
                               "ms_per_drafted_token": 1000 * (following + drafting) / drafted,
                               "tokens_per_step": drafted / steps}
    return table, extra


@torch.no_grad()
def row_costs(model, input_ids: torch.Tensor, rows: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64), repeats: int = 5) -> dict[int, float]:
    """Seconds a full-model pass of n rows takes after `input_ids` (best of three runs of `repeats`)."""
    cache = model.new_cache(input_ids.shape[1] + max(rows) + 2)
    prefill(model, input_ids, cache)
    costs = {}
    for n in rows:
        x = torch.randint(0, model.config.vocab_size, (1, n), device=model.device)
        model(x, cache, input_ids.shape[1])

        def passes(x=x):
            for _ in range(repeats):
                model(x, cache, input_ids.shape[1])

        costs[n] = min(timed(passes, model.device)[1] for _ in range(3)) / repeats
    return costs


def nearest(costs: dict[int, float], rows: int) -> float:
    """A verification of `rows` rows as measured, or of the nearest row count measured."""
    if not costs:
        return 0.0
    return costs[min(costs, key=lambda r: (abs(r - rows), r))]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ssd.tools.breakdown", description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--methods", nargs="+", default=["hybrid", "recycling"], choices=sorted(DRAFTING_METHODS))
    parser.add_argument("--num-prompts", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    model.prepare_trees()
    texts = read_prompts_file(PROMPTS_FILE, CHAT_TASKS)[: args.num_prompts]
    prompts = [encode(tokenizer, task, text, model.device) for task, text in texts]
    hybrid_generate(model, prompts[0], 8)  # warm
    costs = row_costs(model, prompts[0])
    print("a pass of n rows, in one-token steps: " + ", ".join(f"{n}: {c / costs[1]:.2f}" for n, c in costs.items())
          + f" (a step: {1000 * costs[1]:.1f} ms)")
    for method in args.methods:
        table, extra = breakdown(model, prompts, method, args.max_new_tokens)
        summary = extra["summary"]
        print(f"\n{method}: {summary['tokens_per_second']:.1f} tokens/s, {summary['tokens_per_verification']:.2f} tokens "
              f"per verification, prefill {100 * summary['prefill_share']:.0f}% of the time")
        print("| kind | steps | rows/step | tokens/step | ms/step | share of time | proposing share of its time |")
        print("|---|--:|--:|--:|--:|--:|--:|")
        for row in table:
            cells = [row["kind"], row["steps"]] + [f"{row[k]:.2f}" if k in row else "" for k in ("rows_per_step", "tokens_per_step")]
            cells += [f"{row['ms_per_step']:.1f}", f"{100 * row['share_of_time']:.0f}%",
                      f"{100 * row['of_which_proposing']:.0f}%" if "of_which_proposing" in row else ""]
            print("| " + " | ".join(map(str, cells)) + " |")
        costs_ms = extra["verification_ms_by_rows"]
        print("verification alone, median ms by rows: " + ", ".join(f"{r}: {ms:.1f}" for r, ms in costs_ms.items()))
        if "gguf_draft" in extra:
            g = extra["gguf_draft"]
            print(f"llama.cpp's draft: {g['ms_per_drafted_token']:.1f} ms a drafted token (c = "
                  f"{g['ms_per_drafted_token'] / (1000 * costs[1]):.2f} of a step), {g['tokens_per_step']:.2f} tokens a step; "
                  f"keeping its cache in step (dropping rejected positions, feeding what it lacks, the first logits "
                  f"included) {g['following_ms_per_step']:.1f} ms a step")


if __name__ == "__main__":
    main()
