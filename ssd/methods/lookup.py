"""Prompt lookup: drafts copied from earlier in the prompt or output, at no forward pass."""

from __future__ import annotations

from dataclasses import dataclass

from ssd.core.proposers import Outcome, Proposal, Step, StepKind
from ssd.methods.tree import TokenTree, tree_room


class NgramIndex:
    """Prompt-lookup drafting: after the longest recent n-gram that occurred before, propose what followed it then.

    Summaries copy names and phrases from the article, code repeats its
    identifiers; such drafts cost no forward at all. The index maps every
    n-gram (n = 1..max_n) of the sequence to where its latest earlier
    occurrences continued, one per next token, up to `ways` of them (latest
    first), so a lookup costs max_n dictionary reads.
    """

    def __init__(self, tokens: list[int], max_n: int, min_n: int = 1, ways: int = 1):
        self.max_n, self.min_n, self.ways = max_n, min_n, ways
        self.tokens: list[int] = []
        self.continuations: dict[tuple[int, ...], list[int]] = {}
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            # The n-grams ending at the current last token now have a continuation: `token`.
            end = len(self.tokens)
            for n in range(self.min_n, min(self.max_n, end) + 1):
                key = tuple(self.tokens[end - n : end])
                starts = self.continuations.get(key)
                if starts is None or self.ways == 1:
                    self.continuations[key] = [end]
                else:
                    # Latest first, one per next token: an older occurrence that went on with `token` goes.
                    starts[:] = [end, *(start for start in starts if self.tokens[start] != token)][: self.ways]
            self.tokens.append(token)

    def propose(self, max_tokens: int) -> tuple[list[int], int]:
        """Up to `max_tokens` tokens that followed the longest matching suffix (its latest occurrence),
        and that suffix's length; ([], 0) when none matches."""
        continuations, n = self.propose_all(max_tokens)
        return (continuations[0], n) if continuations else ([], 0)

    def propose_all(self, max_tokens: int) -> tuple[list[list[int]], int]:
        """What followed each of the longest matching suffix's kept occurrences (up to `ways`, latest
        first, each beginning with another token), up to `max_tokens` each, and the suffix's length."""
        for n in range(min(self.max_n, len(self.tokens)), self.min_n - 1, -1):
            starts = self.continuations.get(tuple(self.tokens[-n:]))
            if starts:
                return [self.tokens[start : start + max_tokens] for start in starts], n
        return [], 0


def trie(chains: list[list[int]]) -> tuple[list[int], list[int]]:
    """The token tree (tokens, parents; `ssd.methods.tree`) holding every chain as a path from the root, shared
    prefixes once, the first chain's nodes first."""
    tokens, parents, nodes = [], [], {}
    for chain in chains:
        node = -1
        for token in chain:
            if (node, token) not in nodes:
                nodes[node, token] = len(tokens)
                tokens.append(token)
                parents.append(node)
            node = nodes[node, token]
    return tokens, parents


class Lookup:
    """The n-gram lookup as a proposer: offers `("lookup", n)` when a suffix of n tokens matched.

    `short_lookup`: propose at most this many tokens unless the last two steps
    were lookups accepted in full (a copy running on; `LookupConfig`); None: no cap.
    `ways` (greedy): where the suffix occurred before with different next tokens, up to this many of
    its continuations (latest first) are proposed together, as a token tree; 1: the latest alone.
    """

    def __init__(self, max_n: int, min_n: int = 1, short_lookup: int | None = None, ways: int = 1):
        self.index = NgramIndex([], max_n, min_n, ways)
        self.short_lookup = short_lookup
        self.copied = 0  # lookups accepted in full in a row, just before this step
        self._continuations: list[list[int]] = []

    def offer(self, step: Step) -> list[StepKind]:
        self.index.extend(step.sequence[len(self.index.tokens):])
        self._continuations, matched = self.index.propose_all(step.room) if step.room > 0 else ([], 0)
        return [("lookup", matched)] if self._continuations else []

    def propose(self, kind: StepKind, step: Step) -> Proposal:
        cap = self.short_lookup if self.copied < 2 and self.short_lookup is not None else None
        continuations = [tokens[:cap] for tokens in self._continuations]
        if not step.greedy or len(continuations) == 1:
            return Proposal(continuations[0])
        tokens, parents = trie(continuations)
        room = tree_room(step)
        return Proposal(tokens[:room], tree=TokenTree(parents[:room]))

    def observe(self, outcome: Outcome, step: Step) -> None:
        mine = isinstance(outcome.kind, tuple) and outcome.kind[0] == "lookup"
        self.copied = self.copied + 1 if mine and accepted_in_full(outcome) else 0


def accepted_in_full(outcome: Outcome) -> bool:
    """Whether the verification accepted a whole continuation: the chain, or a tree's path to a leaf."""
    proposal = outcome.proposal
    if proposal.tree is None:
        return outcome.accepted == len(proposal.tokens)
    return bool(outcome.path) and outcome.path[-1] not in proposal.tree.parents


@dataclass(frozen=True)
class LookupConfig:
    """Prompt lookup's settings. When the last `ngram_min`..`ngram_size` tokens occurred before in prompt or
    output, the draft is what followed them then (free); 0 turns lookup off. `short_lookup`: a lookup
    proposes at most this many tokens, unless the last two steps were lookups accepted in full (a copy
    running on): where a few more rows can double a verification's cost (float32 MKL on a CPU), a short
    match does not pay for 13 rows, while long copies (QA, summaries) still go 12 at a time. None: no cap.
    """

    ngram_size: int = 3
    ngram_min: int = 1
    short_lookup: int | None = 2

    def __post_init__(self):
        if self.ngram_size < 0 or not 1 <= self.ngram_min <= max(self.ngram_size, 1):
            raise ValueError(f"need ngram_size >= 0 and 1 <= ngram_min <= ngram_size, got {self.ngram_size}, {self.ngram_min}")
        if self.short_lookup is not None and self.short_lookup < 1:
            raise ValueError(f"short_lookup must be >= 1 or None, got {self.short_lookup}")


def lookup_proposers(config: LookupConfig, ways: int = 1) -> list[Lookup]:
    """The lookup `config` asks for, proposing up to `ways` continuations as a tree (`TreeConfig.lookup_ways`):
    none at ngram_size 0."""
    if not config.ngram_size:
        return []
    return [Lookup(config.ngram_size, config.ngram_min, config.short_lookup, ways)]
