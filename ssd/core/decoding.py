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

from ssd.core.checks import check_count
from ssd.core.draft import Draft
from ssd.core.modeling_llama import KVCache, LlamaForCausalLM
from ssd.core.proposers import Gate, Outcome, Proposer, Step
from ssd.core.sampling import Sampling, logits_to_probs, residual, sample
from ssd.core.self_draft import SelfDraft, SelfDraftConfig


@dataclass
class GenerationResult:
    tokens: list[int]  # the new tokens only
    num_drafted_tokens: int = 0
    num_accepted_tokens: int = 0
    num_verifications: int = 0
    drafted_by_kind: dict[str, int] = field(default_factory=dict)  # drafted tokens by the kind of step's name
    accepted_by_kind: dict[str, int] = field(default_factory=dict)  # and of those, the accepted ones
    th_stop_draft: float | None = None  # the final draft-exit threshold

    @property
    def num_looked_up_tokens(self) -> int:
        """Drafts that came from n-gram lookup (`ssd.methods.lookup`; included in num_drafted_tokens)."""
        return self.drafted_by_kind.get("lookup", 0)

    @property
    def matchness(self) -> float:
        """Accepted drafts / drafted tokens (0 when nothing was drafted)."""
        return self.num_accepted_tokens / self.num_drafted_tokens if self.num_drafted_tokens else 0.0


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
    vocab_size = model.config.vocab_size
    outside = input_ids[(input_ids < 0) | (input_ids >= vocab_size)]
    if outside.numel():
        raise ValueError(f"the prompt holds token ids outside the vocabulary (0..{vocab_size - 1}): "
                         f"{sorted(set(outside.tolist()))[:5]}")
    check_max_new_tokens(max_new_tokens)
    total = input_ids.shape[1] + max_new_tokens
    if total > model.max_context:
        raise ValueError(
            f"prompt ({input_ids.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) = {total} "
            f"exceeds the model's context of {model.max_context} tokens"
        )


def check_max_new_tokens(max_new_tokens) -> None:
    check_count("max_new_tokens", max_new_tokens)


def eos_set(eos_token_id: EosTokenIds, vocab_size: int | None = None) -> frozenset[int]:
    """The ids that end a generation, as a set (empty: run to max_new_tokens); with `vocab_size`, an id
    that no token has is refused (it could never end the generation)."""
    if eos_token_id is None:
        return frozenset()
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ValueError(f"eos_token_id must be a non-negative id or a list of them, got {eos_token_id!r}")
    if vocab_size is not None and (outside := sorted(i for i in ids if i >= vocab_size)):
        raise ValueError(f"eos_token_id {outside} outside the vocabulary (0..{vocab_size - 1})")
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


# Slots a generation's cache holds beyond its last token, for a proposal that writes past it (a token tree's nodes,
# `ssd.methods.tree`). Every loop's cache has them: in bfloat16 on a CPU a pass attends over the whole cache.
SPARE_SLOTS = 64


def generation_cache(model: LlamaForCausalLM, input_ids: torch.Tensor, max_new_tokens: int) -> KVCache:
    """The cache of one generation, every decoding loop's alike: in bfloat16 on a CPU passes attend
    over the whole cache, and a sum over more keys (zero weights included) rounds differently."""
    return model.new_cache(min(input_ids.shape[1] + max_new_tokens + SPARE_SLOTS, model.max_context))


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
    cache = generation_cache(model, input_ids, max_new_tokens)
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


@torch.no_grad()
def speculative_decode(
    model: LlamaForCausalLM,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: EosTokenIds,
    config: SelfDraftConfig,
    sampling: Sampling | None,
    generator: torch.Generator | None,
    *,
    draft: Draft | None = None,
    proposers: list[Proposer] | None = None,
    gate: Gate | None = None,
    on_tokens: OnTokens | None = None,
) -> GenerationResult:
    """Each step, one of the `proposers` (or a plain step) proposes tokens, and one full forward
    verifies them: greedy when `sampling` is None, else sampled.

    `proposers`: in the order their kinds are offered (None: Draft & Verify's self-draft alone,
    `SelfDraft.of(model, config, draft)`). `config`: the most tokens a step may propose
    (`max_step_draft`) and the draft head. `gate`: chooses each step's kind among those offered
    (`ssd.methods.gate.DraftGate`; it may carry over a stream of generations, as SWIFT's does); None:
    the last kind offered runs. When sampling, the gate is charged model passes (a verification, plus
    what proposing cost) instead of wall seconds: which kind runs then never depends on timing, so
    neither do the random numbers drawn, and a seed reproduces its sample.
    """
    check_input_ids(model, input_ids, max_new_tokens)
    if proposers is None:
        proposers = [SelfDraft.of(model, config, draft)]
    elif draft is not None:
        raise ValueError("draft= is for the default proposer; a given proposer holds its own draft")
    if gate is not None:
        gate.new_sequence()
    head = config.draft_head(model, input_ids)
    cache = generation_cache(model, input_ids, max_new_tokens)
    output = _Output(max_new_tokens, eos_token_id, on_tokens)
    tokens = output.tokens  # grows as tokens are committed
    output.commit([int(choose(prefill(model, input_ids, cache), sampling, generator))])
    sequence = input_ids[0].tolist() + tokens
    result = GenerationResult(tokens)
    while not output.done:
        # Never draft past max_new_tokens: verification adds one token of its own.
        room = min(config.max_step_draft, max_new_tokens - len(tokens) - 1)
        step = Step(model, cache, sequence, input_ids.shape[1], len(sequence) - 1, room, sampling, generator, head)
        offered = {kind: proposer for proposer in proposers for kind in proposer.offer(step)}
        start = time.perf_counter()  # after the offers: what a proposer does to make one is no step's cost
        kinds = ["plain", *offered]
        kind = kinds[-1] if gate is None else gate.choose(kinds)
        proposal = offered[kind].propose(kind, step) if kind != "plain" else None
        drafts = proposal.tokens if proposal is not None else []
        tree = proposal.tree if proposal is not None else None
        if tree is not None and sampling is not None:
            raise ValueError(f"{kind!r} proposed a token tree; trees are verified greedily only")
        verify_input = torch.tensor([[sequence[-1], *drafts]], device=input_ids.device)
        keep_hidden = proposal is not None and proposal.keep_hidden
        mask = tree.mask(input_ids.device) if tree is not None else None
        out = model(verify_input, cache, step.committed, hidden_states=keep_hidden, tree=mask)
        target_logits, hidden = out if keep_hidden else (out, None)
        target_logits = target_logits[0]
        if tree is None:
            draft_probs = proposal.probs if proposal is not None else None
            accepted, next_token = verify_drafts(target_logits, drafts, draft_probs, sampling, generator)
            path = None
        else:
            path, next_token = tree.accept(target_logits.argmax(dim=-1).tolist(), drafts)
            tree.keep(cache, step.committed, path)
            accepted = len(path)
        new_tokens = output.commit((drafts[:accepted] if path is None else [drafts[i] for i in path]) + [next_token])
        sequence += new_tokens
        cost = time.perf_counter() - start if sampling is None else 1.0 + (proposal.passes if proposal else 0.0)
        if gate is not None:
            gate.record(kind, kinds, accepted + 1, cost)
        outcome = Outcome(kind, proposal, accepted, new_tokens, cost, hidden, target_logits, path)
        for proposer in proposers:
            proposer.observe(outcome, step)
        result.num_verifications += 1
        if drafts:
            result.num_drafted_tokens += len(drafts)
            result.num_accepted_tokens += accepted
            name = kind[0] if isinstance(kind, tuple) else kind
            result.drafted_by_kind[name] = result.drafted_by_kind.get(name, 0) + len(drafts)
            result.accepted_by_kind[name] = result.accepted_by_kind.get(name, 0) + accepted
    result.th_stop_draft = next((p.th_stop_draft for p in proposers if isinstance(p, SelfDraft)), None)
    return result
