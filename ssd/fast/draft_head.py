"""`DraftHead`: the LM head over part of the vocabulary, for a cheaper draft pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssd.fast.low_bit import Int8Weight


@dataclass(frozen=True)
class DraftHead:
    """The LM head over part of the vocabulary, for a cheaper draft.

    The head reads the whole embedding matrix each step (21% of SmolLM2-135M's
    step); a draft may score fewer tokens because verification scores all of
    them, so output stays exact. Column j of its logits is token `token_ids[j]`.
    """

    token_ids: torch.Tensor  # [V'] sorted token ids
    weights: tuple[torch.Tensor, ...]  # their rows of the LM head, in blocks (see LlamaForCausalLM.draft_head)
    low_bit: tuple[Int8Weight, ...] | None = None  # the same blocks of the head's int8 copy, when the model has one

    def __call__(self, x: torch.Tensor, precision: str | None) -> torch.Tensor:
        """Logits over `token_ids`; from the int8 rows when the draft runs at a low precision."""
        if precision is not None and self.low_bit is not None:
            logits = [block(x) for block in self.low_bit]
        else:
            logits = [F.linear(x, block) for block in self.weights]
        return logits[0] if len(logits) == 1 else torch.cat(logits, dim=-1)

    def ids(self, columns: torch.Tensor) -> torch.Tensor:
        """The token ids of these logit columns, on the columns' device (a split model's head ids sit on
        the LM head's device, its logits come back on the first)."""
        return self.token_ids[columns.to(self.token_ids.device)].to(columns.device)

    def full_logits(self, logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """Scatter subset logits into the whole vocabulary; tokens outside get -inf (probability 0)."""
        full = logits.new_full((*logits.shape[:-1], vocab_size), float("-inf"))
        full[..., self.token_ids.to(logits.device)] = logits
        return full


def draft_head(lm_head: torch.Tensor, lm_head_int8: Int8Weight | None, token_ids) -> DraftHead:
    """A head scoring only `token_ids` (unique ids, any order) from the LM head's rows `lm_head`
    ([vocab, hidden]) and, where the model has one, its int8 copy."""
    device, vocab_size = lm_head.device, lm_head.shape[0]
    token_ids = torch.unique(torch.as_tensor(token_ids, dtype=torch.long)).to(device)
    if token_ids.numel() == 0 or token_ids[0] < 0 or token_ids[-1] >= vocab_size:
        raise ValueError(f"draft head token ids must be non-empty and within 0..{vocab_size - 1}")
    # The ids below n are 0..n-1 (the frequent tokens, SelfDraftConfig.draft_head): their rows are the
    # head's first n, used in place; only the rest (the prompt's rarer tokens) are copied.
    n = int((token_ids == torch.arange(len(token_ids), device=device)).sum())
    blocks = ([slice(0, n)] if n else []) + ([token_ids[n:]] if n < len(token_ids) else [])
    low_bit = lm_head_int8 and tuple(lm_head_int8.rows(block) for block in blocks)
    return DraftHead(token_ids, tuple(lm_head[block] for block in blocks), low_bit)
