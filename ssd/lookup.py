"""Prompt lookup: drafts copied from earlier in the prompt or output, at no forward pass."""

from __future__ import annotations

from ssd.gate import StepKind
from ssd.proposers import Outcome, Proposal, Step


class NgramIndex:
    """Prompt-lookup drafting: after the longest recent n-gram that occurred before, propose what followed it then.

    Summaries copy names and phrases from the article, code repeats its
    identifiers; such drafts cost no forward at all. The index maps every
    n-gram (n = 1..max_n) of the sequence to where its latest earlier
    occurrence continued, so a lookup costs max_n dictionary reads.
    """

    def __init__(self, tokens: list[int], max_n: int, min_n: int = 1):
        self.max_n, self.min_n = max_n, min_n
        self.tokens: list[int] = []
        self.continuations: dict[tuple[int, ...], int] = {}
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            # The n-grams ending at the current last token now have a continuation: `token`.
            end = len(self.tokens)
            for n in range(self.min_n, min(self.max_n, end) + 1):
                self.continuations[tuple(self.tokens[end - n : end])] = end
            self.tokens.append(token)

    def propose(self, max_tokens: int) -> tuple[list[int], int]:
        """Up to `max_tokens` tokens that followed the longest matching suffix, and that suffix's
        length; ([], 0) when none matches."""
        for n in range(min(self.max_n, len(self.tokens)), self.min_n - 1, -1):
            start = self.continuations.get(tuple(self.tokens[-n:]))
            if start is not None:
                return self.tokens[start : start + max_tokens], n
        return [], 0


class Lookup:
    """The n-gram lookup as a proposer: offers `("lookup", n)` when a suffix of n tokens matched.

    `short_lookup`: propose at most this many tokens unless the last two steps
    were lookups accepted in full (a copy running on; `DraftConfig`); None: no cap.
    """

    def __init__(self, max_n: int, min_n: int = 1, short_lookup: int | None = None):
        self.index = NgramIndex([], max_n, min_n)
        self.short_lookup = short_lookup
        self.copied = 0  # lookups accepted in full in a row, just before this step
        self._proposal: list[int] = []

    def offer(self, step: Step) -> list[StepKind]:
        self.index.extend(step.sequence[len(self.index.tokens):])
        self._proposal, matched = self.index.propose(step.room) if step.room > 0 else ([], 0)
        return [("lookup", matched)] if self._proposal else []

    def propose(self, kind: StepKind, step: Step) -> Proposal:
        tokens = self._proposal
        if self.copied < 2 and self.short_lookup is not None:
            tokens = tokens[: self.short_lookup]
        return Proposal(tokens)

    def observe(self, outcome: Outcome, step: Step) -> None:
        mine = isinstance(outcome.kind, tuple) and outcome.kind[0] == "lookup"
        self.copied = self.copied + 1 if mine and outcome.accepted == len(outcome.proposal.tokens) else 0


def lookup_proposers(config) -> list[Lookup]:
    """The lookup a `DraftConfig` asks for (`ngram_size`, `ngram_min`, `short_lookup`): none at ngram_size 0."""
    return [Lookup(config.ngram_size, config.ngram_min, config.short_lookup)] if config.ngram_size else []
