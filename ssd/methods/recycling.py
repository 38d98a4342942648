"""Token Recycling (Luo et al., ACL 2025, arXiv 2408.08696): drafts from the verifier's own candidates, at no pass.

Every verification computes the full model's logits at each row it verifies; the top tokens there are
likely successors of that row's input token, whatever the context. A `SuccessorTable` keeps, for each
token seen as an input, the `k` best successors of its latest verified row (`Outcome.logits`), and
how often each rank turned out to be the next token. This serves text that prompt lookup cannot
(nothing is copied from the prompt), at no pass.

Greedy, the `Recycler` proposes trees of the table's candidates (`ssd.methods.tree`), as the paper verifies:
each node's children are its token's successors, and the likeliest nodes by the ranks' observed
acceptance are kept, best first (`SuccessorTable.tree`). The paper's tree is static (its shape fixed
offline); here the shape follows the acceptance measured in the generation, and the size what a
verification of that many rows has cost on the machine (`Recycler.best_size`). The `RecyclingDraft`
lets the table help the self-draft: guesses each draft pass checks, and a recycled tail after its
chain. Sampling keeps to chains (`("recycle", n)`, first successor after first successor): drafts are
certain tokens, as a lookup's are, verified with a one-hot `q`, exactly.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

import torch

from ssd.core.checks import check_count
from ssd.core.draft import Draft
from ssd.core.modeling_llama import LlamaForCausalLM
from ssd.core.proposers import Outcome, Proposal, Proposer, Step, StepKind
from ssd.core.self_draft import AdaptiveThreshold, draft_passes
from ssd.methods.hybrid import DraftConfig
from ssd.methods.lookup import lookup_proposers
from ssd.methods.registry import register_method
from ssd.methods.tree import BranchingDraft, TokenTree, tree_room


@dataclass
class SuccessorTable:
    """Token -> its `k` likeliest successors, from the latest verified row whose input it was."""

    k: int = 8
    rows: dict[int, list[int]] = field(default_factory=dict)
    # How often the token that followed a tabled token was its successor of each rank (then "none").
    rank_hits: list[int] = field(default_factory=lambda: [0] * 9)

    def update(self, tokens: list[int], logits: torch.Tensor) -> None:
        """`logits[i]` ([rows, vocab]) is the full model's next-token logits after input `tokens[i]`."""
        top = logits[: len(tokens)].topk(self.k, dim=-1).indices.tolist()
        self.rows.update(zip(tokens, top))

    def count_ranks(self, tokens: list[int]) -> None:
        """Count, for each token of a committed run that the table had a row for, which rank of that
        row the token after it took (before `update` rewrites the rows)."""
        if len(self.rank_hits) != self.k + 1:
            self.rank_hits = [0] * (self.k + 1)
        for before, after in zip(tokens, tokens[1:]):
            if (successors := self.rows.get(before)) is not None:
                self.rank_hits[successors.index(after) if after in successors else self.k] += 1

    def rank_probabilities(self) -> list[float]:
        """The chance that the next token is a tabled token's successor of each rank, as observed
        (add-one smoothed: at first every rank and "none" alike)."""
        total = sum(self.rank_hits) + len(self.rank_hits)
        return [(hits + 1) / total for hits in self.rank_hits[: self.k]]

    def tree(self, token: int, size: int, depth: int, tokens: list[int] | None = None) -> tuple[list[int], list[int], list[float]]:
        """The `size` likeliest nodes (tokens, parents, chances) of the tree of successors below
        `token`, no deeper than `depth`: a node's chance of acceptance is taken as the product of its
        path's rank probabilities, and nodes come best first, so a parent always comes before its
        children and the first n nodes are the likeliest tree of n. `tokens`: a chain already
        proposed after `token`, which the tree continues from its last token (its nodes come first,
        each the parent of the next, with chance 1)."""
        probabilities = self.rank_probabilities()
        chain = list(tokens or [])
        tokens, parents, depths = chain, list(range(-1, len(chain) - 1)), list(range(1, len(chain) + 1))
        chances = [1.0] * len(chain)
        size += len(chain)
        frontier: list[tuple[float, int, int, int]] = []  # (-chance, order, parent, token)
        order = itertools.count()  # ties go to the node queued first

        def expand(parent: int, chance: float) -> None:
            if (parent < 0 or depths[parent] < depth) and (successors := self.rows.get(tokens[parent] if parent >= 0 else token)):
                for rank, successor in enumerate(successors):
                    heapq.heappush(frontier, (-chance * probabilities[rank], next(order), parent, successor))

        expand(len(chain) - 1, 1.0)
        while frontier and len(tokens) < size:
            chance, _, parent, successor = heapq.heappop(frontier)
            tokens.append(successor)
            parents.append(parent)
            depths.append(1 if parent < 0 else depths[parent] + 1)
            chances.append(-chance)
            expand(len(tokens) - 1, -chance)
        return tokens, parents, chances

    def chain(self, token: int, length: int) -> list[int]:
        """Up to `length` tokens after `token`, each the first successor of the one before."""
        tokens = []
        while len(tokens) < length and (successors := self.rows.get(token)) is not None:
            token = successors[0]
            tokens.append(token)
        return tokens


@dataclass
class RowCosts:
    """What a verification of n rows costs on this machine, as measured: wall seconds per row count,
    exponentially smoothed. On a 2-core AVX512-BF16 EPYC (SmolLM2, bfloat16) 2-4 rows cost a step,
    16 rows 1.24 steps, 32 rows 1.7, 64 rows 2.6 (docs/benchmarks.md, "Token trees")."""

    smoothing: float = 0.7
    by_rows: dict[int, float] = field(default_factory=dict)

    def record(self, rows: int, seconds: float) -> None:
        old = self.by_rows.get(rows)
        self.by_rows[rows] = seconds if old is None else self.smoothing * old + (1 - self.smoothing) * seconds

    def seconds(self, rows: int) -> float | None:
        return self.by_rows.get(rows)


class Recycler:
    """Token Recycling as a proposer, learning from every verification's logits.

    Greedy, it offers one `("recycle-tree", n)` when the table has a row for the last token: of
    `tree_sizes`, the tree of n nodes (no deeper than `max_depth`) expected to commit the most tokens
    per second, by the nodes' chances (`SuccessorTable.tree`) and what verifying n + 1 rows has cost
    in this generation (`RowCosts`, from every step whose proposal cost no pass); none when that is
    under a plain step's rate. A size not yet measured is offered first. Sampling, `("recycle", n)`:
    the chain of first successors, up to `max_tokens`. No `tree_sizes`: no trees. `table`: one to share
    over a stream of generations (None: a fresh one)."""

    def __init__(self, max_tokens: int = 4, table: SuccessorTable | None = None, tree_sizes: tuple[int, ...] = (4, 8, 16, 32),
                 max_depth: int = 8):
        for name, value in (("max_tokens", max_tokens), ("max_depth", max_depth), *(("a tree size", n) for n in tree_sizes)):
            check_count(name, value)
        self.max_tokens, self.tree_sizes, self.max_depth = max_tokens, tuple(sorted(tree_sizes)), max_depth
        self.table = SuccessorTable() if table is None else table
        self.costs = RowCosts()
        self.proposed = self.accepted = 0  # recycled tokens verified, and accepted, in this generation
        self._tree: tuple[list[int], list[int], list[float]] = ([], [], [])

    def offer(self, step: Step) -> list[StepKind]:
        if step.room < 1 or step.sequence[-1] not in self.table.rows:
            return []
        if not step.greedy:
            return [("recycle", len(self.table.chain(step.sequence[-1], min(self.max_tokens, step.room))))]
        if not self.tree_sizes:
            return []
        largest = min(self.tree_sizes[-1], tree_room(step))
        self._tree = self.table.tree(step.sequence[-1], largest, min(self.max_depth, step.room))
        size = self.best_size(self._tree[2])
        return [("recycle-tree", size)] if size else []

    def best_size(self, chances: list[float]) -> int | None:
        """The tree size that commits the most expected tokens per second, if that beats a plain step."""
        sizes = [n for n in self.tree_sizes if n <= len(chances)] or [len(chances)]
        unmeasured = [n for n in sizes if self.costs.seconds(n + 1) is None]
        if unmeasured:
            return unmeasured[0]
        rate = {n: (1 + sum(chances[:n])) / self.costs.seconds(n + 1) for n in sizes}
        best = max(rate, key=rate.get)
        plain = self.costs.seconds(1)
        return best if plain is None or rate[best] > 1 / plain else None

    def propose(self, kind: StepKind, step: Step) -> Proposal:
        if kind[0] == "recycle":
            return Proposal(self.table.chain(step.sequence[-1], kind[1]))
        tokens, parents, _ = self._tree
        return Proposal(tokens[: kind[1]], tree=TokenTree(parents[: kind[1]]))

    def observe(self, outcome: Outcome, step: Step) -> None:
        drafts = outcome.proposal.tokens if outcome.proposal is not None else []
        if step.greedy and (outcome.proposal is None or outcome.proposal.passes == 0):
            self.costs.record(len(drafts) + 1, outcome.cost)  # wall seconds of a verification alone
        # The sequence has grown since: its token at `committed` was the verification's first input.
        self.table.count_ranks(step.sequence[step.committed:])
        if outcome.logits is not None:
            self.table.update([step.sequence[step.committed], *drafts], outcome.logits)
        if isinstance(outcome.kind, tuple) and outcome.kind[0] in ("recycle", "recycle-tree"):
            self.proposed += len(drafts)
            self.accepted += outcome.accepted


class RecyclingDraft(BranchingDraft):
    """The self-draft, greedy, with the table's help: each draft pass also checks `guesses` recycled
    tokens after its input (`draft_with_guesses`: a pass may draft more than one token), and the
    chain ends in a tree of `tail` recycled successors of its last token (`SuccessorTable.tree`),
    where the draft stopped at its exit threshold, at no pass. The exit threshold learns from the
    chain's tokens only. Sampling, it drafts as `SelfDraft` does."""

    def __init__(self, draft: Draft, max_step_draft: int, th_stop_draft: float, adaptive: AdaptiveThreshold | None,
                 gated: bool, table: SuccessorTable, tail: int = 8, guesses: int = 1):
        super().__init__(draft, max_step_draft, th_stop_draft, adaptive, gated)
        self.table, self.tail, self.guesses = table, tail, guesses

    def propose(self, kind: StepKind, step: Step) -> Proposal:
        if step.greedy and self.guesses:
            tokens, passes = draft_with_guesses(step.model, self.draft, step.cache, step.sequence[-1], step.committed,
                                        min(self.max_step_draft, step.room), self.th_stop_draft, step.head,
                                        lambda token, n: self.table.chain(token, min(n, self.guesses)))
            proposal = Proposal(tokens, passes=passes * draft_passes(self.draft, step.model))
            self.chain_length = len(tokens)
        else:
            proposal = super().propose(kind, step)
        size = min(self.tail, tree_room(step) - len(proposal.tokens))
        deeper = step.room > len(proposal.tokens)
        if not step.greedy or size < 1 or not deeper or proposal.tokens[-1] not in self.table.rows:
            return proposal
        tokens, parents, _ = self.table.tree(step.sequence[-1], size, step.room, proposal.tokens)
        return Proposal(tokens, passes=proposal.passes, tree=TokenTree(parents))


@torch.no_grad()
def draft_with_guesses(model, draft, cache, last_token: int, committed: int, max_tokens: int, th_stop_draft: float,
                       head, guess) -> tuple[list[int], int]:
    """Greedy drafting where each draft pass also checks a guessed continuation (`guess(token, n)`: up
    to n tokens after `token`): the pass runs `[token, *guesses]` and keeps the draft's own argmax
    after each input for as long as the guesses equal it, so one pass may draft several tokens. The
    tokens are the draft's greedy chain as one-token passes would make it (up to the rounding of
    several-row passes), stopping after the first whose top probability is under `th_stop_draft`,
    and the number of passes run."""
    tokens, token, passes = [], last_token, 0
    while len(tokens) < max_tokens:
        guesses = guess(token, max_tokens - len(tokens) - 1)
        logits = model(torch.tensor([[token, *guesses]], device=model.device), cache, committed + len(tokens),
                       draft=draft, head=head)[0]
        passes += 1
        confidence, ids = torch.softmax(logits, dim=-1).max(dim=-1)
        if head is not None:
            ids = head.ids(ids)
        confidence, ids = confidence.tolist(), ids.tolist()
        for i, drafted in enumerate(ids):
            tokens.append(drafted)
            if confidence[i] < th_stop_draft or len(tokens) == max_tokens:
                return tokens, passes
            if i == len(guesses) or drafted != guesses[i]:
                break
        token = tokens[-1]
    return tokens, passes


def recycling_proposers(model: LlamaForCausalLM, config: DraftConfig, draft: Draft | None = None) -> list[Proposer]:
    """`method="recycling"`: Token Recycling's chains beside `essg`'s proposers (the self-draft, then
    lookups). First in the gate's order, so that with the gate off they never run in the draft's place."""
    model.prepare_trees()
    recycler = Recycler()
    draft = model.default_draft if draft is None else draft
    settings = config.self_draft
    self_draft = RecyclingDraft(model.prepare_draft(draft), settings.max_step_draft, settings.th_stop_draft,
                                AdaptiveThreshold.of(settings), config.gate, recycler.table)
    return [recycler, self_draft, *lookup_proposers(config.lookup, config.trees.lookup_ways)]


register_method("recycling", recycling_proposers)
