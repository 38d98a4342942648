"""Causal attention over the KV cache, by device and kind of pass: which kernel runs, and the
grouped-query products that run on a CPU."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention_path(device_type: str, n_queries: int, prefill: bool, masked: bool, grouped: bool) -> str:
    """Which attention computes a pass, by device and kind of pass (prefill, one-token step,
    verification), in any dtype:

    - `"grouped"`: two plain products (`grouped_attention`), on a CPU for up to 64 queries. PyTorch's
      CPU flash kernel took ~7x longer for a few bfloat16 queries (438 vs 65 us, 1 query over 740
      keys); in float32 a masked pass of a grouped-query model falls back to the math kernel, which
      repeats the KV heads (SmolLM2, 4-5 rows over 400 keys on an Intel Xeon: 162-175 ms a pass,
      118-140 ms grouped; one row 75-100 ms with the flash kernel, 74-75 ms grouped).
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


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start_pos: int, tree: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention with grouped-query heads: q [B, H, T, D] for the pass's rows, k and v
    [B, KV, S, D] at cache slots 0..S-1, the pass's own rows at slots start_pos..; query i sees the
    slots below start_pos and, of the pass's, those up to its own (`tree` None) or those `tree`
    ([T, T] bool, `ssd.tree.ancestor_mask`) marks in its row."""
    n_queries, key_len = q.shape[2], k.shape[2]
    grouped = q.shape[1] != k.shape[1]
    # A one-token step over exactly its keys needs no mask.
    masked = n_queries > 1 or key_len != start_pos + 1 or tree is not None
    prefill = start_pos == 0 and key_len == n_queries and tree is None
    path = attention_path(q.device.type, n_queries, prefill, masked, grouped)
    if path == "causal":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=grouped)
    if path == "grouped" and tree is not None:  # each row's keys in the order of a chain along its path
        return grouped_attention(q, k, v, path_mask(tree, start_pos, key_len), tree_order(tree, start_pos, key_len))
    if tree is not None:
        mask = tree_mask(tree, start_pos, key_len)
    else:
        mask = torch.ones(n_queries, key_len, dtype=torch.bool, device=q.device).tril(start_pos) if masked else None
    if path == "grouped":
        return grouped_attention(q, k, v, mask)
    if path == "expanded":
        k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
        grouped = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=grouped)


def tree_mask(tree: torch.Tensor, start_pos: int, key_len: int) -> torch.Tensor:
    """[T, S]: the slots each row of a tree pass sees: the committed ones, and its ancestors' and its own."""
    n = tree.shape[0]
    committed = torch.ones(n, start_pos, dtype=torch.bool, device=tree.device)
    later = torch.zeros(n, key_len - start_pos - n, dtype=torch.bool, device=tree.device)
    return torch.cat((committed, tree, later), dim=1)


def tree_order(tree: torch.Tensor, start_pos: int, key_len: int) -> torch.Tensor:
    """[T, S]: each row's slots in the order that a chain along its path holds them: the committed
    ones, its ancestors' (by depth: parents come before children) and its own, then the rest."""
    n = tree.shape[0]
    window = torch.argsort((~tree).to(torch.int8), dim=-1, stable=True) + start_pos
    committed = torch.arange(start_pos, device=tree.device).expand(n, start_pos)
    later = torch.arange(start_pos + n, key_len, device=tree.device).expand(n, key_len - start_pos - n)
    return torch.cat((committed, window, later), dim=1)


def path_mask(tree: torch.Tensor, start_pos: int, key_len: int) -> torch.Tensor:
    """`tree_mask` in `tree_order`'s order: row r sees the first start_pos + depth(r) + 1 keys."""
    positions = start_pos - 1 + tree.sum(dim=-1, keepdim=True)  # a row sees itself and each ancestor once
    return torch.arange(key_len, device=tree.device) <= positions


def grouped_attention(q, k, v, mask, order=None):
    """Attention as two products, each KV head shared by its group of query heads; softmax in float32.

    `order` ([T, S] slots, `tree_order`): each row's scores are read in that order for the softmax
    (`mask` then applies to that order) and its weights written back to their slots. The softmax sums
    a key's term in the vector lane its place picks, so a tree node after a sibling (its parent a slot
    further back than in a chain) rounded differently from the same token decoded step by step
    (bfloat16, SmolLM2); in a chain's order it sums as the step does. The product with the values
    took the weights at either place alike (docs/numerics.md, "Token trees").
    """
    batch, n_heads, length, head_dim = q.shape
    n_kv = k.shape[1]
    group = n_heads // n_kv
    # Query heads h = g*group .. g*group+group-1 use KV head g: stack them as rows.
    scores = (q.reshape(batch, n_kv, group * length, head_dim) @ k.transpose(-1, -2)).float() * head_dim**-0.5
    scores = scores.view(batch, n_kv, group, length, -1)
    if order is not None:
        order = order.expand_as(scores)
        scores = scores.gather(-1, order)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if order is not None:
        weights = torch.zeros_like(weights).scatter(-1, order, weights)
    weights = weights.flatten(2, 3).to(v.dtype)
    return (weights @ v).view(batch, n_heads, length, head_dim)
