"""Token trees: several candidate continuations verified in one pass of the full model.

A tree proposal is a list of tokens with a parent each (`Proposal.tree`, a `TokenTree`): -1 for the last
committed token (the root), else the index of an earlier node. The verification pass takes `[root, *tokens]`
as its rows. Row r sits at position `committed + depth(r)` and attends to the committed cache and to
its own ancestors in the pass (`ancestor_mask`), so its logits are what a step after that path would
compute. Greedy acceptance (`accept_path`) walks from the root to the child that equals the full
model's argmax, as far as one does; the accepted nodes' keys and values are then moved to the
positions a step-by-step decode would have written (`keep_path`), and everything beyond is stale, as
after a rejected chain. A chain is the tree whose parents are -1, 0, 1, ...

The loop knows a tree only through `TokenTree`'s three calls (`core.proposers.Tree`): the mask its pass
reads, the path it accepts, and the cache after it. Trees are verified greedily only: sampling keeps to
chains (docs/design.md, "Token trees").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssd.core.checks import check_count
from ssd.core.draft import Draft
from ssd.core.modeling_llama import KVCache, LlamaForCausalLM
from ssd.core.proposers import Outcome, Proposal, Step, StepKind
from ssd.core.self_draft import AdaptiveThreshold, SelfDraft, SelfDraftConfig, draft_passes


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


@dataclass(frozen=True)
class TreeConfig:
    """Token trees in the default decoder (greedy; off by default). `lookup_ways`: where the matched n-gram
    occurred before with different next tokens, up to this many of its continuations (latest first) are
    verified together; 1: the latest alone. `branches`: where the self-draft stopped at a token under its
    threshold, its next `branches` likeliest tokens there are verified beside that token
    (`BranchingDraft`); 0: chains only."""

    lookup_ways: int = 1
    branches: int = 0

    def __post_init__(self):
        check_count("branches", self.branches, 0)
        check_count("lookup_ways", self.lookup_ways)


@dataclass(frozen=True)
class TokenTree:
    """The shape of a tree proposal: token i follows token `parents[i]` (-1: the last committed token)."""

    parents: list[int]

    def check(self, n_tokens: int) -> None:
        check_parents(self.parents, n_tokens)

    def mask(self, device: torch.device | str) -> torch.Tensor:
        return ancestor_mask(self.parents, device)

    def accept(self, targets: list[int], tokens: list[int]) -> tuple[list[int], int]:
        return accept_path(targets, tokens, self.parents)

    def keep(self, cache: KVCache, committed: int, path: list[int]) -> None:
        keep_path(cache, committed, path)


# Spare slots past the last token that a generation's cache holds for the pass verifying a tree
# (`core.decoding.SPARE_SLOTS`), but one: a pass that fills the cache runs eager (`ssd.fast.compiled.runs_compiled`).
def tree_room(step: Step) -> int:
    """The most nodes a token tree may hold at `step`: the cache's slots after the last token's, but one.
    Its depth is bounded by `step.room`."""
    return step.cache.max_len - step.committed - 2


class BranchingDraft(SelfDraft):
    """The self-draft whose proposal may end in a tree (greedy): where the draft stopped at a token under
    its threshold, the one it is least sure of, its next `branches` likeliest tokens there join the
    proposal as that token's siblings, verified in the same pass. The threshold learns from the chain
    alone. Sampling, or with no token under the threshold: a chain, as `SelfDraft`'s."""

    def __init__(self, draft: Draft, max_step_draft: int, th_stop_draft: float,
                 adaptive: AdaptiveThreshold | None = None, gated: bool = True, branches: int = 0,
                 exit_margin: float | None = None):
        super().__init__(draft, max_step_draft, th_stop_draft, adaptive, gated, exit_margin)
        self.branches = branches
        self.chain_length = 0  # the drafted chain of the latest proposal (its tree's first nodes)

    @classmethod
    def of(cls, model: LlamaForCausalLM, config: SelfDraftConfig, draft: Draft | None = None,
           gated: bool = False, *, branches: int = 0) -> SelfDraft:
        """`SelfDraft.of`, with `branches`; a plain `SelfDraft` where it is 0."""
        chain = SelfDraft.of(model, config, draft, gated)
        if not branches:
            return chain
        model.prepare_trees()
        return BranchingDraft(chain.draft, chain.max_step_draft, chain.th_stop_draft, chain.adaptive, chain.gated,
                   branches, chain.exit_margin)

    def propose(self, kind: StepKind, step: Step) -> Proposal:
        tokens, probs, others = self.draft_chain(step, self.branches)
        self.chain_length = len(tokens)
        passes = len(tokens) * draft_passes(self.draft, step.model)
        others = others[: max(tree_room(step) - len(tokens), 0)]
        if not others:
            return Proposal(tokens, probs, passes=passes)
        chain = list(range(-1, len(tokens) - 1))
        return Proposal(tokens + others, passes=passes, tree=TokenTree(chain + [chain[-1]] * len(others)))

    def observe(self, outcome: Outcome, step: Step) -> None:
        if outcome.kind == self.kind:
            # A tree's chain is its first `chain_length` nodes, the rest its branches.
            chain = len(outcome.proposal.tokens) if outcome.path is None else self.chain_length
            accepted = outcome.accepted if outcome.path is None else sum(node < chain for node in outcome.path)
            self.learn(step, accepted, chain)
