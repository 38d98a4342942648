"""The gate: of the kinds of step on offer, run the one that measurably commits tokens fastest.

A kind is what the gate keys its measurements by: "plain" (verify no drafts:
one autoregressive step), "draft" (the self-draft), ("lookup", n) (an n-gram
lookup whose matched suffix has n tokens), or whatever key another proposer
offers (`ssd.core.proposers`). The gate knows nothing of how a kind proposes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ssd.core.proposers import StepKind


@dataclass
class _Episode:
    """A plain step or a draft, with the lookup steps after it so far."""

    kind: StepKind
    tokens: float
    seconds: float
    before: tuple  # the kind's smoothed episode figures (tokens, seconds) before this episode


@dataclass
class DraftGate:
    """Runs whichever kind of step commits the most tokens per second, so drafting never costs much over base.

    Which kinds pay depends on the machine as much as on the text: where
    verifying 13 rows costs two steps (float32 on a CPU), a lookup after a
    1-token match loses; where extra rows are almost free (bfloat16 on
    native-bfloat16 CPUs) it wins. So each kind's committed tokens and wall
    seconds per step are measured, smoothed over its recent steps, and of the
    kinds available at a step the fastest runs. Between a plain step and a
    draft (or between drafts), though, the choice decides how soon the next
    free lookup comes (a 12-token draft holds lookups off), so those are
    compared over their episodes: the step and the lookup steps that follow
    it. An unmeasured kind runs the first time it is available; a losing kind runs again after
    `interval` of the steps where it was available, and that interval doubles
    (up to `max_interval`) after each such probe that still loses. Which kind
    runs never changes the output.
    """

    probe_interval: int = 8
    max_interval: int = 64
    smoothing: float = 0.7
    tokens: dict = field(default_factory=dict, init=False)  # per kind, per step
    seconds: dict = field(default_factory=dict, init=False)
    episode_tokens: dict = field(default_factory=dict, init=False)  # plain and draft, per episode
    episode_seconds: dict = field(default_factory=dict, init=False)
    since: dict = field(default_factory=dict, init=False)  # steps the kind was available but did not run
    interval: dict = field(default_factory=dict, init=False)
    episode: _Episode | None = field(default=None, init=False)

    def new_sequence(self) -> None:
        """A new generation starts: its first lookups belong to no earlier plain step or draft."""
        self.episode = None

    def forget(self, kind: StepKind) -> None:
        """Drop what was measured of `kind` (the draft after the skip set changed): it is measured afresh."""
        for table in (self.tokens, self.seconds, self.episode_tokens, self.episode_seconds, self.since, self.interval):
            table.pop(kind, None)

    def rate(self, kind: StepKind) -> float:
        return self.tokens[kind] / self.seconds[kind]

    def best(self, kinds: list[StepKind]) -> StepKind:
        """The fastest measured kind among `kinds`; the kinds that open episodes (all but lookups:
        plain, draft, SWIFT's...) are first compared by their episodes, the later kind winning a tie."""
        measured = [k for k in kinds if k in self.seconds]
        episodic = [k for k in reversed(measured) if not isinstance(k, tuple)]
        if len(episodic) > 1:
            winner = max(episodic, key=lambda k: self.episode_tokens[k] / self.episode_seconds[k])
            measured = [k for k in measured if isinstance(k, tuple) or k == winner]
        return max(measured, key=self.rate)

    def choose(self, kinds: list[StepKind]) -> StepKind:
        """The kind to run among those available now: an unmeasured one, a losing one due a probe, else the fastest."""
        unmeasured = [k for k in kinds if k not in self.seconds]
        if unmeasured:
            return unmeasured[0]
        best = self.best(kinds)
        due = [k for k in kinds if k != best and self.since.get(k, 0) >= self.interval.get(k, self.probe_interval)]
        return max(due, key=lambda k: self.since[k]) if due else best

    def record(self, kind: StepKind, kinds: list[StepKind], tokens: int, seconds: float) -> None:
        """One finished step of `kind`, chosen among `kinds`: the tokens it committed, its wall time."""
        probe = kind in self.seconds and kind != self.best(kinds)
        _smooth(self.tokens, self.seconds, kind, tokens, seconds, (self.tokens.get(kind), self.seconds.get(kind)), self.smoothing)
        if isinstance(kind, tuple):  # a lookup: part of the open episode
            if self.episode is not None:
                self.episode.tokens += tokens
                self.episode.seconds += seconds
        else:
            self.episode = _Episode(kind, tokens, seconds, (self.episode_tokens.get(kind), self.episode_seconds.get(kind)))
        if (episode := self.episode) is not None:
            _smooth(self.episode_tokens, self.episode_seconds, episode.kind, episode.tokens, episode.seconds,
                    episode.before, self.smoothing)
        for k in kinds:
            self.since[k] = 0 if k == kind else self.since.get(k, 0) + 1
        if probe:  # back off while this kind keeps losing
            interval = self.interval.get(kind, self.probe_interval)
            self.interval[kind] = self.probe_interval if self.best(kinds) == kind else min(2 * interval, self.max_interval)


def _smooth(tokens: dict, seconds: dict, kind, new_tokens, new_seconds, before: tuple, smoothing: float) -> None:
    """Exponentially smoothed figures for `kind`: the new run's, weighed against `before` (None: first run)."""
    for table, value, old in ((tokens, new_tokens, before[0]), (seconds, new_seconds, before[1])):
        table[kind] = value if old is None else smoothing * old + (1 - smoothing) * value


