"""Turning logits into token choices, shared by every decoder.

The draft and the full model go through the same `logits_to_probs`, so their
distributions are transformed alike by construction (speculative sampling is
exact only for the transformed `p` and `q`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    """Settings of a sampled decode; `None` in place of one means greedy."""

    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature} (use do_sample=False for greedy)")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def logits_to_probs(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """Probabilities over the last dimension after temperature, top-k and top-p."""
    logits = logits.float() / sampling.temperature
    if sampling.top_k > 0:
        kth = torch.topk(logits, min(sampling.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        # Keep the smallest head of the sorted list whose mass reaches top_p (always the first token).
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= sampling.top_p
        logits = logits.masked_fill(outside.scatter(-1, order, outside), float("-inf"))
    return torch.softmax(logits, dim=-1)


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token drawn from a 1-D distribution, as a 0-d tensor on its device."""
    return torch.multinomial(probs, 1, generator=generator)[0]


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Where to sample after a rejected draft: `max(0, p - q)` renormalised, so the result is distributed as `p`.

    When `p` and `q` agree to rounding the residual sums to zero; a rejection
    is then (almost) impossible, and `p` itself is the right fallback.
    """
    rest = (p - q).clamp_min(0)
    total = rest.sum()
    return rest / total if total > 0 else p
