"""What predicts that the full model rejects a drafted token: `python -m ssd.tools.acceptance`.

At each position of base decoding's own output, the self-draft drafts one token from the full model's
cache, as a step's first draft pass does, and the tables count how often that token is the full
model's (the one base wrote there), by the two exit signals a greedy draft can read: its top
probability (Draft & Verify's, `th_stop_draft`) and the margin of its top logit over the runner-up's
(`exit_margin`). A draft of the model's own weights parts from it where the two nearly tie, whatever
its top probability (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch

from ssd.core.decoding import base_generate, generation_cache
from ssd.core.draft import Draft
from ssd.core.modeling_llama import LlamaForCausalLM
from ssd.core.self_draft import SelfDraftConfig
from ssd.loading.model import load_model
from ssd.methods.hybrid import DraftConfig
from ssd.tools.prompts import CHAT_TASKS, PROMPTS_FILE, encode, read_prompts_file

PROBABILITY_BINS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.8, 0.95, 1.0)
MARGIN_BINS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, math.inf)


@dataclass(frozen=True)
class Signal:
    """One drafted token: the draft's top probability, its top-1 minus top-2 logit, and whether the
    full model's greedy token there was the draft's."""

    probability: float
    margin: float
    accepted: bool


@torch.no_grad()
def draft_signals(model: LlamaForCausalLM, input_ids: torch.Tensor, max_new_tokens: int, draft: Draft,
                  config: SelfDraftConfig = DraftConfig().self_draft) -> list[Signal]:
    """A `Signal` for each of base decoding's new tokens but the first, drafted by `draft` (with the
    trimmed head `config` gives it) after the text before it."""
    output = base_generate(model, input_ids, max_new_tokens).tokens
    sequence = torch.cat([input_ids, torch.tensor([output], dtype=input_ids.dtype, device=input_ids.device)], dim=1)
    head = config.draft_head(model, input_ids)
    cache = generation_cache(model, input_ids, max_new_tokens)
    model(sequence, cache, 0, last_only=True)  # the full model's keys and values at every position
    signals = []
    for position in range(input_ids.shape[1], sequence.shape[1] - 1):
        # The draft writes the position of its input token; the next position's pass must find the
        # full model's there again, as drafting after a verification does.
        saved = [(keys[:, :, position].clone(), values[:, :, position].clone()) for keys, values in zip(cache.keys, cache.values)]
        logits = model(sequence[:, position : position + 1], cache, position, draft=draft, head=head)[0, -1]
        for (keys, values), (key, value) in zip(zip(cache.keys, cache.values), saved):
            keys[:, :, position], values[:, :, position] = key, value
        top = logits.topk(2)
        token = top.indices[0] if head is None else head.ids(top.indices[0])
        signals.append(Signal(float(torch.softmax(logits, dim=-1)[top.indices[0]]),
                              float(top.values[0] - top.values[1]), int(token) == int(sequence[0, position + 1])))
    return signals


def by_bins(signals: list[Signal], field: str, bins: tuple[float, ...]) -> list[dict]:
    """Tokens and the share accepted in each bin `[bins[i], bins[i+1])` of the signal `field` (the last
    bin closed)."""
    rows = []
    for i, (low, high) in enumerate(zip(bins, bins[1:])):
        last = i == len(bins) - 2
        inside = [s for s in signals if low <= getattr(s, field) and (getattr(s, field) < high or last)]
        rows.append({"from": low, "to": high, "tokens": len(inside),
                     "accepted": sum(s.accepted for s in inside) / len(inside) if inside else None})
    return rows


def print_table(title: str, rows: list[dict]) -> None:
    print(f"| {title} | " + " | ".join(f"{r['from']:g}-{r['to']:g}" for r in rows) + " |")
    print("|---|" + "--:|" * len(rows))
    print("| tokens | " + " | ".join(str(r["tokens"]) for r in rows) + " |")
    print("| accepted | " + " | ".join("-" if r["accepted"] is None else f"{r['accepted']:.3f}" for r in rows) + " |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ssd.tools.acceptance", description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--num-prompts", type=int, default=10, help="chat prompts of the bench")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--full-head", action="store_true",
                        help="the draft scores the whole vocabulary, as essg's (default: the trimmed head the default method drafts with)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    draft = model.prepare_draft(model.default_draft)
    config = SelfDraftConfig() if args.full_head else DraftConfig().self_draft
    signals = []
    for task, text in read_prompts_file(PROMPTS_FILE, CHAT_TASKS)[: args.num_prompts]:
        signals += draft_signals(model, encode(tokenizer, task, text, model.device), args.max_new_tokens, draft, config)
    if not signals:
        raise SystemExit("no drafted tokens to count: --max-new-tokens must be 2 or more")
    rejected = sum(not s.accepted for s in signals)
    trimmed = not args.full_head and config.draft_vocab_size < model.config.vocab_size
    head = f"a head of ids below {config.draft_vocab_size} and the prompt's" if trimmed else "the whole vocabulary"
    print(f"draft {draft}, scoring {head}, {str(model.dtype).removeprefix('torch.')}: "
          f"{len(signals)} drafted tokens, {rejected} rejected (acceptance {1 - rejected / len(signals):.3f})\n")
    print_table("draft's top probability", by_bins(signals, "probability", PROBABILITY_BINS))
    print()
    print_table("top-1 minus top-2 logit", by_bins(signals, "margin", MARGIN_BINS))


if __name__ == "__main__":
    main()
