"""The proposer protocol: every way of drafting tokens plugs into the decoding loop through it.

Each step, the loop asks every proposer what it can `offer` (kinds of step, the
gate's keys), lets the gate (`ssd.methods.gate`) choose one kind among those and a
plain step, asks that kind's proposer to `propose` tokens, verifies them in one
full pass, and tells every proposer the `Outcome`. The loop knows nothing of
any proposer's internals; a proposer knows nothing of the loop's but the
`Step` it is shown. Output stays exact whatever is proposed: verification
decides every committed token.

A proposal is a chain of tokens, or a tree of them (`Proposal.tree`, `ssd.methods.tree`): candidates
that share a prefix, verified in the same one pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from ssd.core.modeling_llama import KVCache, LlamaForCausalLM
from ssd.core.sampling import Sampling
from ssd.fast import DraftHead

# A kind of step, the key a gate chooses by: a name, or a (name, detail) pair such as ("lookup", n).
StepKind = str | tuple[str, int]


@dataclass
class Step:
    """What a proposer may read at a step.

    `sequence`: the prompt and every committed token; its last token sits at
    position `committed` and is not yet in the cache (positions below hold the
    full model's keys and values). `room`: the most tokens a proposal may hold.
    `head`: the generation's trimmed draft head, if any (`SelfDraftConfig.draft_head`).
    A proposer may run passes of its own and write the cache at positions from
    `committed` on; positions below must be left as found.
    """

    model: LlamaForCausalLM
    cache: KVCache
    sequence: list[int]
    prompt_length: int
    committed: int
    room: int
    sampling: Sampling | None
    generator: torch.Generator | None
    head: DraftHead | None = None

    @property
    def greedy(self) -> bool:
        """Whether this generation decodes greedily (`sampling` None) or samples: what a proposer reads to
        choose how it proposes (trees, lookups' continuations) and what it is charged in (`Gate`)."""
        return self.sampling is None

    @property
    def output(self) -> list[int]:
        """The tokens generated so far."""
        return self.sequence[self.prompt_length:]


class Tree(Protocol):
    """A proposal's tokens as a tree, verified in one pass (`ssd.methods.tree.TokenTree`): the loop reads its
    rows' mask, asks it which path the full model's argmaxes accept, and lets it leave the cache as a
    step-by-step decode of that path would."""

    def check(self, n_tokens: int) -> None:
        """Raise a ValueError unless the tree has `n_tokens` nodes."""
        ...

    def mask(self, device: torch.device | str) -> torch.Tensor:
        """[n+1, n+1] bool over the pass's rows `[last token, *tokens]`: which rows each row sees."""
        ...

    def accept(self, targets: list[int], tokens: list[int]) -> tuple[list[int], int]:
        """The accepted nodes (a path from the root), and the full model's token after them."""
        ...

    def keep(self, cache: KVCache, committed: int, path: list[int]) -> None:
        """Move the path's keys and values where a step-by-step decode would have written them."""
        ...


@dataclass(frozen=True)
class Proposal:
    """Tokens to verify after the last committed one.

    `probs` ([k, vocab]): the draft's distribution of each token when sampling;
    None means the tokens are certain (q is 1 at each), as a lookup's are.
    `passes`: what proposing cost, in full-model passes; when sampling the gate
    is charged these instead of wall seconds, so that which kind runs, and so
    the random numbers drawn, never depend on timing. `keep_hidden`: the loop
    keeps the verification's residual stream at every layer for `Outcome.hidden`
    (CLaSp's selection reads it); otherwise none is kept. `tree`: the tokens form a tree
    (`ssd.methods.tree.TokenTree`); None is a chain. Trees are verified greedily only.
    """

    tokens: list[int]
    probs: torch.Tensor | None = None
    passes: float = 0.0
    keep_hidden: bool = False
    tree: Tree | None = None

    def __post_init__(self):
        if self.tree is not None:
            self.tree.check(len(self.tokens))


@dataclass(frozen=True)
class Outcome:
    """What a step's verification returned: the kind that ran, its proposal (None for a plain step),
    how many of its tokens were accepted (of a tree's, those on the accepted path: `path`, their
    indices), the tokens committed (accepted ones and the bonus), and
    what the step cost in the gate's units: wall seconds when greedy, model passes when sampling.
    `hidden`: where the proposal asked for it, the full model's residual stream entering each layer
    and leaving the last (L+1 tensors of [1, rows, hidden]), over the verified rows. `logits`: the
    verification's ([rows, vocab]; row i follows input i of `[last token, *proposal.tokens]`)."""

    kind: StepKind
    proposal: Proposal | None
    accepted: int
    new_tokens: list[int]
    cost: float
    hidden: list[torch.Tensor] | None = None
    logits: torch.Tensor | None = None
    path: list[int] | None = None


@runtime_checkable
class Proposer(Protocol):
    """One way of proposing tokens. One instance serves one generation (or, like SWIFT's, holds
    state carried over a stream of them)."""

    def offer(self, step: Step) -> list[StepKind]:
        """The kinds of step this proposer can run now; none to sit the step out. Kinds are the gate's
        keys: two proposers never offer the same one."""
        ...

    def propose(self, kind: StepKind, step: Step) -> Proposal:
        """Tokens for `kind`, one of those offered at this step, at most `step.room` of them."""
        ...

    def observe(self, outcome: Outcome, step: Step) -> None:
        """Every step's outcome, whichever proposer ran; `step` is the step as it was proposed, but its
        `sequence` already holds the committed tokens (the verified input began at `step.committed`)."""
        ...


@runtime_checkable
class Gate(Protocol):
    """Chooses each step's kind among those offered (`ssd.methods.gate.DraftGate`). It is charged each step's
    cost in one unit per generation: wall seconds when greedy, model passes when sampling (so that which kind
    runs, and the random numbers drawn, never depend on timing)."""

    def new_sequence(self) -> None:
        """A generation starts (a gate may serve a stream of them)."""
        ...

    def choose(self, kinds: list[StepKind]) -> StepKind:
        """One of `kinds` ("plain" first, then those offered)."""
        ...

    def record(self, kind: StepKind, kinds: list[StepKind], tokens: int, cost: float) -> None:
        """What the step of `kind` committed and cost, with the kinds that were on offer."""
        ...
