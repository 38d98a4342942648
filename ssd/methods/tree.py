"""Token trees: several candidate continuations verified in one pass of the full model.

A tree proposal is a list of tokens with a parent each (`Proposal.parents`): -1 for the last committed
token (the root), else the index of an earlier node. The verification pass takes `[root, *tokens]`
as its rows. Row r sits at position `committed + depth(r)` and attends to the committed cache and to
its own ancestors in the pass (`ancestor_mask`), so its logits are what a step after that path would
compute. Greedy acceptance (`accept_path`) walks from the root to the child that equals the full
model's argmax, as far as one does; the accepted nodes' keys and values are then moved to the
positions a step-by-step decode would have written (`keep_path`), and everything beyond is stale, as
after a rejected chain. A chain is the tree whose parents are -1, 0, 1, ...; it takes the chain path.

Trees are verified greedily only: sampling keeps to chains (docs/design.md, "Token trees").
"""

from __future__ import annotations

import torch

from ssd.core.modeling_llama import KVCache


def check_parents(parents: list[int], n_tokens: int) -> None:
    """A tree's parents: one per token, each -1 (the root) or an earlier node."""
    if len(parents) != n_tokens:
        raise ValueError(f"a tree needs one parent per token, got {len(parents)} for {n_tokens} tokens")
    for i, parent in enumerate(parents):
        if not -1 <= parent < i:
            raise ValueError(f"node {i}'s parent must be -1 or an earlier node, got {parent}")


def ancestor_mask(parents: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """[n+1, n+1] bool over the rows `[root, *nodes]`: row r sees row s where s is r or an ancestor of r."""
    n = len(parents) + 1
    mask = torch.eye(n, dtype=torch.bool)
    mask[:, 0] = True
    for i, parent in enumerate(parents):
        row = i + 1
        if parent >= 0:
            mask[row] |= mask[parent + 1]
    return mask.to(device)


def accept_path(targets: list[int], tokens: list[int], parents: list[int]) -> tuple[list[int], int]:
    """Greedy acceptance over a tree: the nodes of the longest path from the root whose every token is
    the full model's argmax after its parent (`targets[r]`: the argmax of row r, row 0 the root's),
    and the argmax after the path's last node (the bonus token)."""
    children: dict[int, list[int]] = {}
    for i, parent in enumerate(parents):
        children.setdefault(parent, []).append(i)
    path, node = [], -1
    while True:
        target = targets[node + 1]
        child = next((c for c in children.get(node, ()) if tokens[c] == target), None)
        if child is None:
            return path, target
        path.append(child)
        node = child


def keep_path(cache: KVCache, committed: int, path: list[int]) -> None:
    """Move the accepted nodes' keys and values (node i was written at `committed + 1 + i`) to
    `committed + 1 ..`, where a step-by-step decode of the path writes them. Layers the pass did not
    run hold nothing there to move, and stay as they are."""
    if path == list(range(len(path))):
        return
    source = torch.tensor(path, device=cache.keys[0].device) + committed + 1
    target = slice(committed + 1, committed + 1 + len(path))
    for keys, values in zip(cache.keys, cache.values):
        source_on = source.to(keys.device)
        keys[:, :, target] = keys.index_select(2, source_on)
        values[:, :, target] = values.index_select(2, source_on)
