"""Causal attention over the KV cache, by device and kind of pass: which kernel runs, and the
grouped-query products that run on a CPU."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ssd.fast import cpu, rows_made_invariant


def attention_path(device_type: str, n_queries: int, prefill: bool, masked: bool, grouped: bool) -> str:
    """Which attention computes a pass, by device and kind of pass (prefill, one-token step,
    verification), in any dtype:

    - `"grouped"`: two plain products (`grouped_attention`), on a CPU for up to 64 queries: PyTorch's
      CPU flash kernel is several times slower for a few bfloat16 queries, and in float32 a masked pass
      of a grouped-query model falls back to the math kernel, which repeats the KV heads
      (design.md, "Measurements behind the code").
    - `"causal"`: `scaled_dot_product_attention(is_causal=True)`, a CUDA prefill: no mask tensor, so the
      flash kernel can run, grouped-query heads included.
    - `"expanded"`: on CUDA, a masked pass (a verification) of a grouped-query model, over its KV heads
      repeated for each query head: given a mask and `enable_gqa`, only the math kernel runs, and it
      builds the whole score matrix; without `enable_gqa` the memory-efficient kernel takes the mask.
    - `"sdpa"`: `scaled_dot_product_attention` with the mask (if any) and `enable_gqa` as they come:
      every other pass (a CUDA one-token step, a CPU pass of over 64 queries).

    The CUDA rules follow PyTorch's kernel constraints, not a measurement: no GPU was at hand
    (`scripts/gpu_check.py` times the passes on one).
    """
    if device_type == "cpu":
        return "grouped" if n_queries <= 64 else "sdpa"
    if device_type != "cuda" or not masked:
        return "sdpa"
    if prefill:
        return "causal"
    return "expanded" if grouped else "sdpa"


class TreeLayout(NamedTuple):
    """Where the rows of a token-tree pass (`ssd.methods.tree`) look, built once per pass (`tree_layout`).

    The pass's T rows sit at slots start..start+T-1; row r sees the slots below `start` and those of
    the pass's rows `ancestors[r]` marks ([T, T] bool: its ancestors and itself), `depth[r] + 1` of
    them ([T, 1]). `order` ([T, T]): each row's window slots (offsets from `start`) in the order a
    chain along its path holds them, its ancestors' by depth and its own, then the others; `inverse`:
    where each slot sits in `order`."""

    start: int
    ancestors: torch.Tensor
    depth: torch.Tensor
    order: torch.Tensor
    inverse: torch.Tensor

    def mask(self, key_len: int) -> torch.Tensor:
        """[T, S]: the slots each row sees, in slot order."""
        n, device = self.ancestors.shape[0], self.ancestors.device
        return torch.cat((torch.ones(n, self.start, dtype=torch.bool, device=device), self.ancestors,
                          torch.zeros(n, key_len - self.start - n, dtype=torch.bool, device=device)), dim=1)

    def path_mask(self, key_len: int) -> torch.Tensor:
        """[T, S]: `mask` with each row's window in `order`'s order: its first start + depth + 1 slots."""
        return torch.arange(key_len, device=self.depth.device) <= self.start + self.depth


def tree_layout(tree: torch.Tensor, start_pos: int) -> TreeLayout:
    """The layout of a tree pass whose T rows (`tree`: [T, T] bool, row r seeing row s where s is r or
    an ancestor, `ssd.methods.tree.ancestor_mask`) sit at slots start_pos.."""
    order = torch.argsort((~tree).to(torch.int8), dim=-1, stable=True)  # parents come before children
    depth = tree.sum(dim=-1, keepdim=True) - 1  # a row sees itself and each ancestor once
    return TreeLayout(start_pos, tree, depth, order, torch.argsort(order, dim=-1))


def permute_window(x: torch.Tensor, start: int, index: torch.Tensor) -> torch.Tensor:
    """`x` ([..., T, S]) with each row's T entries from `start` on reordered by `index` ([T, T])."""
    n = index.shape[-1]
    window = x[..., start : start + n].gather(-1, index.expand(*x.shape[:-1], n))
    return torch.cat((x[..., :start], window, x[..., start + n :]), dim=-1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start_pos: int, tree: TreeLayout | None = None) -> torch.Tensor:
    """Causal attention with grouped-query heads: q [B, H, T, D] for the pass's rows, k and v
    [B, KV, S, D] at cache slots 0..S-1, the pass's own rows at slots start_pos..; query i sees the
    slots below start_pos and, of the pass's, those up to its own, or with a `tree` those of its
    ancestors and its own."""
    n_queries, key_len = q.shape[2], k.shape[2]
    grouped = q.shape[1] != k.shape[1]
    # A one-token step over exactly its keys needs no mask.
    masked = n_queries > 1 or key_len != start_pos + 1 or tree is not None
    prefill = start_pos == 0 and key_len == n_queries and tree is None
    path = attention_path(q.device.type, n_queries, prefill, masked, grouped)
    if path == "causal":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=grouped)
    if path == "grouped" and tree is not None:  # each row's keys in the order of a chain along its path
        return grouped_attention(q, k, v, tree.path_mask(key_len), tree)
    if tree is not None:
        mask = tree.mask(key_len)
    else:
        mask = torch.ones(n_queries, key_len, dtype=torch.bool, device=q.device).tril(start_pos) if masked else None
    if path == "grouped":
        return grouped_attention(q, k, v, mask)
    if path == "expanded":
        k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
        grouped = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=grouped)


def grouped_attention(q, k, v, mask, tree: TreeLayout | None = None):
    """Attention as two products, each KV head shared by its group of query heads; softmax in float32.

    With a `tree`, each row's scores over the pass's slots are read in its path's chain order
    (`TreeLayout.order`; `mask` then applies in that order) for the softmax, and its weights put
    back in slot order. The softmax sums a key's term in the vector lane its place picks, so a tree
    node after a sibling (its parent a slot further back than in a chain) rounded differently from
    the same token decoded step by step (bfloat16, SmolLM2); in a chain's order it sums as the step
    does. The product with the values took the weights at either place alike (docs/numerics.md,
    "Token trees").
    """
    batch, n_heads, length, head_dim = q.shape
    n_kv = k.shape[1]
    group = n_heads // n_kv
    # Query heads h = g*group .. g*group+group-1 use KV head g: stack them as rows.
    scores = (q.reshape(batch, n_kv, group * length, head_dim) @ k.transpose(-1, -2)).float() * head_dim**-0.5
    scores = scores.view(batch, n_kv, group, length, -1)
    if tree is not None:
        scores = permute_window(scores, tree.start, tree.order)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if tree is not None:
        weights = permute_window(weights, tree.start, tree.inverse)
    if cpu.AMX and rows_made_invariant(v.device.type, v.dtype):
        # In float32, each output sums its terms key by key in the keys' order, so a tree row, whose keys
        # lie apart, sums what the same row's step sums, the gaps adding zeros; AMX's bfloat16 products
        # sum keys in adjacent pairs, and a gap regroups them. As columns: a product's columns run alike
        # whatever their number, its rows not beyond 32 (group * length: 39 in a 13-token verification).
        values = v.float().transpose(-1, -2) @ weights.flatten(2, 3).transpose(-1, -2)
        return values.transpose(-1, -2).to(v.dtype).reshape(batch, n_heads, length, head_dim)
    weights = weights.flatten(2, 3).to(v.dtype)
    return (weights @ v).view(batch, n_heads, length, head_dim)
