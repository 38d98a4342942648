"""Token Recycling (Luo et al., ACL 2025, arXiv 2408.08696): drafts from the verifier's own candidates, at no pass.

Every verification computes the full model's logits at each row it verifies; the top tokens there are
likely successors of that row's input token, whatever the context. A `SuccessorTable` keeps, for each
token seen as an input, the `k` best successors of its latest verified row (`Outcome.logits`), and a
`Recycler` drafts by walking the table from the last committed token, first successor after first
successor. This serves text that prompt lookup cannot (nothing is copied from the prompt) at no draft
pass, so the gate can run it wherever its acceptance pays for the rows it adds to a verification.

The paper verifies a static tree of the table's candidates (its top-k branches); `ssd` verifies chains
(`ssd.proposers`), so a recycled proposal here is the chain of first successors, and the other `k - 1`
successors are kept for trees. Drafts are certain tokens, as a lookup's are: sampling verifies them with a
one-hot `q`, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ssd.decoding import DraftConfig, default_proposers
from ssd.draft import Draft
from ssd.gate import StepKind
from ssd.modeling_llama import LlamaForCausalLM
from ssd.proposers import Outcome, Proposal, Proposer, Step


@dataclass
class SuccessorTable:
    """Token -> its `k` likeliest successors, from the latest verified row whose input it was."""

    k: int = 8
    rows: dict[int, list[int]] = field(default_factory=dict)

    def update(self, tokens: list[int], logits: torch.Tensor) -> None:
        """`logits[i]` ([rows, vocab]) is the full model's next-token logits after input `tokens[i]`."""
        top = logits[: len(tokens)].topk(self.k, dim=-1).indices.tolist()
        self.rows.update(zip(tokens, top))

    def chain(self, token: int, length: int) -> list[int]:
        """Up to `length` tokens after `token`, each the first successor of the one before."""
        tokens = []
        while len(tokens) < length and (successors := self.rows.get(token)) is not None:
            token = successors[0]
            tokens.append(token)
        return tokens


class Recycler:
    """Token Recycling as a proposer of chains: offers `("recycle", n)` when the table gives `n` tokens
    after the last one (at most `max_tokens`), and learns from every verification's logits. `table`:
    one to share over a stream of generations (None: a fresh one)."""

    def __init__(self, max_tokens: int = 4, table: SuccessorTable | None = None):
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
        self.max_tokens = max_tokens
        self.table = SuccessorTable() if table is None else table
        self.proposed = self.accepted = 0  # recycled tokens verified, and accepted, in this generation
        self._chain: list[int] = []

    def offer(self, step: Step) -> list[StepKind]:
        self._chain = self.table.chain(step.sequence[-1], min(self.max_tokens, step.room))
        return [("recycle", len(self._chain))] if self._chain else []

    def propose(self, kind: StepKind, step: Step) -> Proposal:
        return Proposal(self._chain)

    def observe(self, outcome: Outcome, step: Step) -> None:
        drafts = outcome.proposal.tokens if outcome.proposal is not None else []
        if outcome.logits is not None:  # the sequence has grown since: its token at `committed` was the input
            self.table.update([step.sequence[step.committed], *drafts], outcome.logits)
        if isinstance(outcome.kind, tuple) and outcome.kind[0] == "recycle":
            self.proposed += len(drafts)
            self.accepted += outcome.accepted


def recycling_proposers(model: LlamaForCausalLM, config: DraftConfig, draft: Draft | None = None) -> list[Proposer]:
    """`method="recycling"`: Token Recycling's chains beside `essg`'s proposers (the self-draft, then
    lookups). First in the gate's order, so that with the gate off they never run in the draft's place."""
    return [Recycler(), *default_proposers(model, config, draft)]
