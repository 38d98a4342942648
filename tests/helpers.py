"""Comparing token sequences, and explaining a divergence by its logit margin."""

import os
import random
from pathlib import Path

import torch

from ssd.data import DATA_DIR_ENV

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def data_dir() -> Path | None:
    """The offline CNN/DM and XSum folder ($SSD_DATA_DIR, else ../shared/data), or None."""
    folder = Path(os.environ.get(DATA_DIR_ENV, SHARED_DATA))
    return folder if folder.is_dir() else None


# In float32, batched verification and step-by-step decoding differ only in the
# last bits; an argmax may flip only where the top two logits are this close.
NEAR_TIE_FLOAT32 = 1e-3


def random_skip_set(num_layers: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A random `fraction` of all 2*L sub-layers, reproducible by seed."""
    rng = random.Random(seed)
    chosen = rng.sample(range(2 * num_layers), round(2 * num_layers * fraction))
    return sorted(i for i in chosen if i < num_layers), sorted(i - num_layers for i in chosen if i >= num_layers)


@torch.no_grad()
def top2_margin(model, input_ids: torch.Tensor, prefix: list[int]) -> float:
    """The full model's gap between its two best logits after prompt + prefix."""
    ids = torch.cat([input_ids[0].cpu(), torch.tensor(prefix, dtype=torch.long)])[None].to(model.device)
    logits = model(ids, model.new_cache(ids.shape[1]), 0)[0, -1]
    top = torch.topk(logits.float(), 2).values
    return float(top[0] - top[1])


def assert_same_tokens(expected: list[int], got: list[int], model, input_ids, near_tie: float, label: str) -> None:
    """Token identity; a divergence passes only at a near-tie, and is reported."""
    if expected == got:
        return
    position = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
    if position == min(len(expected), len(got)):
        raise AssertionError(f"{label}: lengths differ ({len(expected)} vs {len(got)}) with a common prefix")
    margin = top2_margin(model, input_ids, expected[:position])
    report = f"{label}: diverges at new token {position} ({expected[position]} vs {got[position]}), top-2 logit margin {margin:.3g}"
    print(report)
    assert margin < near_tie, report + f" is not a near-tie (< {near_tie})"
