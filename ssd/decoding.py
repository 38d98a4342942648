"""Decoding loops: autoregressive, and self-speculative (draft, then verify).

Every loop owns one `KVCache` and one committed length `n`: positions below
`n` hold the full model's keys and values in every layer. The last token
produced (at position `n`) is not yet in the cache. A step drafts from `n`
on in the draft model, verifies `[last token, drafts]` at `n .. n+k` with the
full model (which overwrites those positions in every layer), and advances
`n` past the accepted tokens. Rejection costs nothing: positions beyond `n`
are never read and get overwritten later.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ssd.low_bit import precision_bytes_share
from ssd.modeling_llama import DraftHead, KVCache, LlamaForCausalLM
from ssd.sampling import Sampling, logits_to_probs, residual, sample


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that wall-clock time measures it (a no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class GenerationResult:
    tokens: list[int]  # the new tokens only
    num_drafted_tokens: int = 0
    num_accepted_tokens: int = 0
    num_verifications: int = 0
    num_looked_up_tokens: int = 0  # drafts that came from n-gram lookup (included in num_drafted_tokens)
    th_stop_draft: float | None = None  # the final draft-exit threshold

    @property
    def matchness(self) -> float:
        """Accepted drafts / drafted tokens (0 when nothing was drafted)."""
        return self.num_accepted_tokens / self.num_drafted_tokens if self.num_drafted_tokens else 0.0


@dataclass
class AdaptiveThreshold:
    """Draft & Verify's draft-exit threshold update (paper defaults).

    `m = b1*m + (1-b1)*accepted/drafted`; raise the threshold by `e` while `m`
    is under the target `a`, hold it when the draft ran its full length, lower
    it otherwise; smooth with `b2`. `every`: update every this many steps.
    """

    every: int = 1
    b1: float = 0.5
    b2: float = 0.9
    e: float = 0.01
    a: float = 0.90
    matchness: float = field(default=0.0, init=False)
    steps: int = field(default=0, init=False)

    def update(self, threshold: float, accepted: int, drafted: int, max_step_draft: int) -> float:
        self.steps += 1
        self.matchness = self.b1 * self.matchness + (1 - self.b1) * accepted / drafted
        if self.steps % self.every:
            return threshold
        if self.matchness < self.a:
            target = threshold + self.e
        elif drafted == max_step_draft:
            target = threshold
        else:
            target = threshold - self.e
        return self.b2 * threshold + (1 - self.b2) * target


# A step's kind: "plain" (verify no drafts: one autoregressive step), "draft" (the
# layer-skipping draft) or ("lookup", n) (an n-gram lookup whose matched suffix has n tokens).
StepKind = str | tuple[str, int]


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
    draft, though, the choice decides how soon the next free lookup comes (a
    12-token draft holds lookups off), so those two are compared over their
    episodes: the step and the lookup steps that follow it. An unmeasured
    kind runs the first time it is available; a losing kind runs again after
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
        """The fastest measured kind among `kinds`, plain against draft by their episodes."""
        measured = [k for k in kinds if k in self.seconds]
        if "plain" in measured and "draft" in measured:
            episode_rate = {k: self.episode_tokens[k] / self.episode_seconds[k] for k in ("plain", "draft")}
            measured.remove(min(episode_rate, key=episode_rate.get))
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


# --- the pieces --------------------------------------------------------------


def choose(logits: torch.Tensor, sampling: Sampling | None, generator: torch.Generator | None) -> torch.Tensor:
    """The next token from one row of logits, argmax or a sample, as a `[1, 1]` tensor on the logits'
    device: it is the next step's input as it stands. Greedy, reading it is the step's one host sync
    (`torch.multinomial` also checks its input on the host)."""
    if sampling is None:
        return logits.argmax().view(1, 1)
    return sample(logits_to_probs(logits, sampling), generator).view(1, 1)


@torch.no_grad()
def prefill(model: LlamaForCausalLM, input_ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Run the full model over the prompt; returns the logits of its last position."""
    return model(input_ids, cache, 0, last_only=True)[0, -1]


@torch.no_grad()
def draft_tokens(
    model: LlamaForCausalLM,
    cache: KVCache,
    last_token: int,
    committed: int,
    max_tokens: int,
    th_stop_draft: float,
    sampling: Sampling | None,
    generator: torch.Generator | None,
    head: DraftHead | None = None,
) -> tuple[list[int], torch.Tensor | None]:
    """Up to `max_tokens` tokens from the draft model, stopping after the first
    whose top probability is under `th_stop_draft`. Writes the cache only at
    positions >= `committed`, only in the layers the draft runs. `head`: the
    draft scores only these tokens (the others get probability 0).

    Returns the tokens and, when sampling, their distributions `q` ([k, vocab]). Each token stays on
    the device as the next step's input; greedy, the exit test is a step's one host sync, and the
    tokens are read once, at the end.
    """
    if max_tokens < 1:
        return [], None
    tokens, probs = [], []
    token = torch.tensor([[last_token]], device=model.device)
    with model.self_draft():
        for step in range(max_tokens):
            logits = model(token, cache, committed + step, head=head)[0, -1]
            if sampling is None:
                confidence, token = torch.softmax(logits, dim=-1).max(dim=-1)
                # A 1-element index, not a 0-d one (which PyTorch reads on the host).
                token = token if head is None else head.token_ids[token.view(1).to(head.token_ids.device)]
            else:
                if head is not None:
                    logits = head.full_logits(logits, model.config.vocab_size)
                q = logits_to_probs(logits, sampling)
                confidence, token = q.max(), sample(q, generator)
                probs.append(q)
            token = token.to(model.device).view(1, 1)  # a split model's head ids sit on the LM head's device
            tokens.append(token)
            if confidence < th_stop_draft:
                break
    return torch.cat(tokens, dim=1)[0].tolist(), (torch.stack(probs) if probs else None)


@torch.no_grad()
def verify_drafts(
    target_logits: torch.Tensor,
    drafts: list[int],
    draft_probs: torch.Tensor | None,
    sampling: Sampling | None,
    generator: torch.Generator | None,
) -> tuple[int, int]:
    """How many drafts the full model accepts, and the token it adds after them.

    `target_logits` ([k+1, vocab]) are the full model's logits over
    `[last token, drafts]`: row i predicts the position of draft i. When
    sampling, `draft_probs` ([k, vocab]) is the draft's `q`; None means the
    drafts are certain (looked up: `q` is 1 at the draft), with no `[k, vocab]`
    one-hot built for them.
    """
    if sampling is None:
        # Greedy: accept the longest prefix that equals the full model's argmax.
        targets = target_logits.argmax(dim=-1).tolist()
        accepted = 0
        while accepted < len(drafts) and drafts[accepted] == targets[accepted]:
            accepted += 1
        return accepted, targets[accepted]
    p = logits_to_probs(target_logits, sampling)
    for i, token in enumerate(drafts):
        # Accept x with probability min(1, p(x)/q(x)); on rejection, sample
        # from max(0, p - q) renormalised: the result is distributed as p.
        r = torch.rand((), device=p.device, generator=generator)
        if r * (1.0 if draft_probs is None else draft_probs[i, token]) < p[i, token]:
            continue
        if draft_probs is None:  # a certain draft: its one-hot row, built only on rejection
            q = F.one_hot(torch.tensor(token, device=p.device), p.shape[-1]).to(p.dtype)
        else:
            q = draft_probs[i]
        return i, int(sample(residual(p[i], q), generator))
    return len(drafts), int(sample(p[len(drafts)], generator))


# --- the loops ---------------------------------------------------------------


# End-of-sequence ids: one id, several (Qwen2 and Llama-3-Instruct have two), or None (never stop early).
EosTokenIds = int | Collection[int] | None
# Receives each run of newly committed tokens (a streamer's feed): the first token, then each verified chunk.
OnTokens = Callable[[list[int]], None]


def check_input_ids(model: LlamaForCausalLM, input_ids: torch.Tensor, max_new_tokens: int) -> None:
    """Every decoding entry point's check: one non-empty prompt that fits the context with its new tokens."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a [1, T] tensor of token ids, got {shape}")
    if input_ids.shape[0] != 1:
        raise ValueError(f"ssd decodes one sequence at a time (batch size 1), got a batch of {input_ids.shape[0]}")
    if input_ids.shape[1] == 0:
        raise ValueError("the prompt is empty")
    if input_ids.dtype not in (torch.long, torch.int32):
        raise ValueError(f"input_ids must hold integer token ids, got {input_ids.dtype}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    total = input_ids.shape[1] + max_new_tokens
    if total > model.max_context:
        raise ValueError(
            f"prompt ({input_ids.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) = {total} "
            f"exceeds the model's context of {model.max_context} tokens"
        )


def eos_set(eos_token_id: EosTokenIds) -> frozenset[int]:
    """The ids that end a generation, as a set (empty: run to max_new_tokens)."""
    if eos_token_id is None:
        return frozenset()
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ValueError(f"eos_token_id must be a non-negative id or a list of them, got {eos_token_id!r}")
    return frozenset(ids)


class _Output:
    """The new tokens of one generation: cut at max_new_tokens and just after the first EOS, fed to `on_tokens`."""

    def __init__(self, max_new_tokens: int, eos_token_id: EosTokenIds, on_tokens: OnTokens | None):
        self.tokens: list[int] = []
        self.max_new_tokens, self.eos, self.on_tokens = max_new_tokens, eos_set(eos_token_id), on_tokens
        self.done = False

    def commit(self, new: list[int]) -> list[int]:
        """Appends what fits of `new`; returns it."""
        new = new[: self.max_new_tokens - len(self.tokens)]
        end = next((i + 1 for i, token in enumerate(new) if token in self.eos), None)
        if end is not None:
            new, self.done = new[:end], True
        self.tokens += new
        self.done = self.done or len(self.tokens) >= self.max_new_tokens
        if self.on_tokens is not None and new:
            self.on_tokens(new)
        return new


@torch.no_grad()
def base_generate(
    model: LlamaForCausalLM,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: EosTokenIds = None,
    sampling: Sampling | None = None,
    generator: torch.Generator | None = None,
    on_tokens: OnTokens | None = None,
) -> GenerationResult:
    """Plain autoregressive decoding with the full model, one token per forward."""
    check_input_ids(model, input_ids, max_new_tokens)
    cache = model.new_cache(input_ids.shape[1] + max_new_tokens)
    output = _Output(max_new_tokens, eos_token_id, on_tokens)
    token = choose(prefill(model, input_ids, cache), sampling, generator)
    output.commit([int(token)])
    committed = input_ids.shape[1]
    while not output.done:
        logits = model(token, cache, committed)[0, -1]
        committed += 1
        token = choose(logits, sampling, generator)
        output.commit([int(token)])
    return GenerationResult(output.tokens)


# Called before each self-speculative step with (cache, committed length, new tokens so far).
BeforeStep = Callable[[KVCache, int, list[int]], None]


@dataclass(frozen=True)
class DraftConfig:
    """How the draft model runs: its length, its exit threshold, its head, and when it runs at all.

    `draft_vocab_size`: the draft scores only token ids below this (BPE ids
    roughly follow frequency) plus the prompt's tokens; None scores all.
    `gate`: each step runs the kind (plain, layer-skipping draft, lookup per
    match length) that measurably commits tokens fastest (`DraftGate`), with
    no layer-skipping draft when the model skips nothing; off: a lookup when
    one matches, else the layer-skipping draft.
    `ngram_size`: hybrid drafting. When the last `ngram_min`..`ngram_size`
    tokens occurred before in prompt or output, the draft is what followed
    them then (free), else the layer-skipping draft; 0 turns lookup off.
    `short_lookup`: a lookup proposes at most this many tokens, unless the
    last two steps were lookups accepted in full (a copy running on): then
    up to `max_step_draft`. Where verifying 4 rows costs twice as much as 3
    (float32 MKL on a CPU: 70 vs 38 ms, 1 row 35 ms), a 2-token lookup costs
    about a step, so a short match does not pay for 13 rows, while long
    copies (QA, summaries) still go 12 at a time. None: always up to
    `max_step_draft`.
    """

    max_step_draft: int = 12
    th_stop_draft: float = 0.6
    auto_th_stop_draft: bool = True
    auto_parameters: tuple = (1, 0.5, 0.9, 0.01, 0.9)  # [every, b1, b2, e, a], as in the reference code
    draft_vocab_size: int | None = 16384
    gate: bool = True
    ngram_size: int = 3
    ngram_min: int = 1
    short_lookup: int | None = 2

    def __post_init__(self):
        if self.max_step_draft < 1:
            raise ValueError(f"max_step_draft must be >= 1, got {self.max_step_draft}")
        if not 0 <= self.th_stop_draft <= 1:
            raise ValueError(f"th_stop_draft must be in [0, 1], got {self.th_stop_draft}")
        if self.draft_vocab_size is not None and self.draft_vocab_size < 1:
            raise ValueError(f"draft_vocab_size must be >= 1 or None, got {self.draft_vocab_size}")
        if self.ngram_size < 0 or not 1 <= self.ngram_min <= max(self.ngram_size, 1):
            raise ValueError(f"need ngram_size >= 0 and 1 <= ngram_min <= ngram_size, got {self.ngram_size}, {self.ngram_min}")
        if self.short_lookup is not None and self.short_lookup < 1:
            raise ValueError(f"short_lookup must be >= 1 or None, got {self.short_lookup}")

    def draft_head(self, model: LlamaForCausalLM, input_ids: torch.Tensor) -> DraftHead | None:
        """The draft's head for this prompt: frequent tokens plus the prompt's own (names, code identifiers)."""
        if self.draft_vocab_size is None or self.draft_vocab_size >= model.config.vocab_size:
            return None
        frequent = torch.arange(self.draft_vocab_size, device=input_ids.device)
        return model.draft_head(torch.cat([frequent, input_ids.flatten()]))


def exact_self_speculative_generate(
    model: LlamaForCausalLM,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: EosTokenIds = None,
    draft: DraftConfig = DraftConfig(),
    before_step: BeforeStep | None = None,
    gate: DraftGate | None = None,
    on_tokens: OnTokens | None = None,
) -> GenerationResult:
    """Greedy self-speculative decoding: output equals `base_generate`'s token for token wherever a
    verification's logits rank tokens as a one-token step's do (docs/numerics.md says where that holds)."""
    return _self_speculative(model, input_ids, max_new_tokens, eos_token_id, draft, None, None, before_step, gate, on_tokens)


def self_speculative_sample(
    model: LlamaForCausalLM,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: EosTokenIds = None,
    draft: DraftConfig = DraftConfig(),
    sampling: Sampling | None = Sampling(),
    generator: torch.Generator | None = None,
    before_step: BeforeStep | None = None,
    gate: DraftGate | None = None,
    on_tokens: OnTokens | None = None,
) -> GenerationResult:
    """Self-speculative sampling: output distributed exactly as sampling the full model. The same
    `generator` state gives the same tokens: the gate decides from counted passes, not wall time."""
    return _self_speculative(
        model, input_ids, max_new_tokens, eos_token_id, draft, sampling, generator, before_step, gate, on_tokens
    )


@torch.no_grad()
def _self_speculative(
    model, input_ids, max_new_tokens, eos_token_id, draft, sampling, generator, before_step=None, gate=None,
    on_tokens=None,
) -> GenerationResult:
    """Each step drafts with the skip sets on the model, then verifies all drafts in one full forward.

    `before_step(cache, committed, tokens)` runs before every step (SWIFT
    optimises the skip set there); it may change the model's skip sets and
    write the cache, but must leave positions below `committed` as it found them.
    `gate`: a `DraftGate` carried over a stream of generations (SWIFT's), so
    what it measured on earlier inputs holds; None: a fresh one when `draft.gate`.
    When sampling, the gate is charged model passes (a draft token at the share
    of sub-layers it runs) instead of wall seconds: which kind runs then never
    depends on timing, so neither do the random numbers drawn, and a seed
    reproduces its sample.
    """
    check_input_ids(model, input_ids, max_new_tokens)
    max_step_draft, th_stop_draft = draft.max_step_draft, draft.th_stop_draft
    adaptive = AdaptiveThreshold(*draft.auto_parameters) if draft.auto_th_stop_draft else None
    if gate is None:
        gate = DraftGate() if draft.gate else None
    elif not draft.gate:
        raise ValueError("a DraftGate was given but draft.gate is False")
    else:
        gate.new_sequence()
    head = draft.draft_head(model, input_ids)
    cache = model.new_cache(input_ids.shape[1] + max_new_tokens)
    output = _Output(max_new_tokens, eos_token_id, on_tokens)
    tokens = output.tokens  # grows as tokens are committed
    output.commit([int(choose(prefill(model, input_ids, cache), sampling, generator))])
    lookup = NgramIndex(input_ids[0].tolist() + tokens, draft.ngram_size, draft.ngram_min) if draft.ngram_size else None
    committed = input_ids.shape[1]
    copied = 0  # lookups accepted in full in a row, just before this step: a copy running on, see short_lookup
    result = GenerationResult(tokens, th_stop_draft=th_stop_draft)
    while not output.done:
        if before_step is not None:
            before_step(cache, committed, tokens)
        start = time.perf_counter()
        # Never draft past max_new_tokens: verification adds one token of its own.
        room = min(max_step_draft, max_new_tokens - len(tokens) - 1)
        proposal, matched = lookup.propose(room) if lookup is not None and room > 0 else ([], 0)
        # With no sub-layer skipped and full precision, the draft is the full model: it saves at most the
        # trimmed head's share of a step, and its long drafts hold off lookups, which cost nothing.
        # The gate skips it.
        can_draft = room > 0 and (gate is None or any(model.get_skip_layers()) or model.get_draft_precision() is not None)
        kinds = ["plain"] + (["draft"] if can_draft else []) + ([("lookup", matched)] if proposal else [])
        kind = kinds[-1] if gate is None else gate.choose(kinds)
        drafts, draft_probs = [], None
        if kind == "draft":
            drafts, draft_probs = draft_tokens(
                model, cache, tokens[-1], committed, room, th_stop_draft, sampling, generator, head
            )
        elif kind != "plain":
            drafts = proposal if copied >= 2 or draft.short_lookup is None else proposal[: draft.short_lookup]
        verify_input = torch.tensor([[tokens[-1], *drafts]], device=input_ids.device)
        target_logits = model(verify_input, cache, committed)[0]
        accepted, next_token = verify_drafts(target_logits, drafts, draft_probs, sampling, generator)
        committed += accepted + 1
        new_tokens = drafts[:accepted] + [next_token]
        output.commit(new_tokens)
        if lookup is not None:
            lookup.extend(new_tokens)
        result.num_verifications += 1
        if gate is not None:
            cost = time.perf_counter() - start if sampling is None else _passes(kind, len(drafts), model)
            gate.record(kind, kinds, accepted + 1, cost)
        if drafts:
            result.num_drafted_tokens += len(drafts)
            result.num_accepted_tokens += accepted
        copied = copied + 1 if isinstance(kind, tuple) and accepted == len(drafts) else 0
        if isinstance(kind, tuple):  # a lookup
            result.num_looked_up_tokens += len(drafts)
        elif kind == "draft" and adaptive is not None:
            th_stop_draft = adaptive.update(th_stop_draft, accepted, len(drafts), max_step_draft)
    result.th_stop_draft = th_stop_draft
    return result


def _passes(kind: StepKind, num_drafts: int, model: LlamaForCausalLM) -> float:
    """A step's cost in full-model passes: the verification, plus a self-draft's tokens at the share of
    sub-layers the draft runs, times the share of weight bytes its precision reads. Deterministic,
    unlike wall time."""
    if kind != "draft":
        return 1.0
    attention, mlp = model.get_skip_layers()
    depth = 1 - (len(attention) + len(mlp)) / (2 * model.num_layers)
    return 1.0 + num_drafts * depth * precision_bytes_share(model.get_draft_precision(), model.dtype)
