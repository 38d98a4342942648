"""The self-draft: the same model with sub-layers skipped and/or on low-bit weights (a `Draft`), as a proposer."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ssd.core.draft import Draft, precision_bytes_share
from ssd.core.modeling_llama import KVCache, LlamaForCausalLM
from ssd.core.proposers import Outcome, Proposal, Step, StepKind
from ssd.core.sampling import Sampling, logits_to_probs, sample
from ssd.fast import DraftHead


@dataclass(frozen=True)
class SelfDraftConfig:
    """How Draft & Verify's self-draft runs: its length, its exit threshold and how that adapts, its head.

    `max_step_draft`: the most tokens a step drafts. `th_stop_draft`: the draft stops after a token whose
    probability under the draft is under this (greedy: its top probability; sampled: the drawn token's, before
    temperature and filters, as the reference code reads it); `auto_th_stop_draft`: the threshold adapts
    (`AdaptiveThreshold`, with `auto_parameters` `[every, b1, a, e, b2]`, in the reference code's order).
    The defaults are the paper's evaluation settings. `draft_vocab_size`: the draft scores only token ids
    below this (BPE ids roughly follow frequency) plus the prompt's tokens (`ssd.fast.draft_head`); None
    scores all, as the paper. `exit_margin` (greedy): stop after a token whose logit is less than this above
    its runner-up's instead (the threshold then stays fixed); None: by `th_stop_draft`.
    """

    max_step_draft: int = 12
    th_stop_draft: float = 0.6
    auto_th_stop_draft: bool = True
    auto_parameters: tuple = (1, 0.5, 0.9, 0.01, 0.9)
    draft_vocab_size: int | None = None
    exit_margin: float | None = None

    def __post_init__(self):
        if self.max_step_draft < 1:
            raise ValueError(f"max_step_draft must be >= 1, got {self.max_step_draft}")
        if not 0 <= self.th_stop_draft <= 1:
            raise ValueError(f"th_stop_draft must be in [0, 1], got {self.th_stop_draft}")
        if self.draft_vocab_size is not None and self.draft_vocab_size < 1:
            raise ValueError(f"draft_vocab_size must be >= 1 or None, got {self.draft_vocab_size}")
        if self.exit_margin is not None and not self.exit_margin >= 0:
            raise ValueError(f"exit_margin must be >= 0 or None, got {self.exit_margin!r}")

    def draft_head(self, model: LlamaForCausalLM, input_ids: torch.Tensor) -> DraftHead | None:
        """The draft's head for this prompt: frequent tokens plus the prompt's own (names, code identifiers)."""
        if self.draft_vocab_size is None or self.draft_vocab_size >= model.config.vocab_size:
            return None
        frequent = torch.arange(self.draft_vocab_size, device=input_ids.device)
        return model.draft_head(torch.cat([frequent, input_ids.flatten()]))


@dataclass
class AdaptiveThreshold:
    """Draft & Verify's draft-exit threshold update, as the reference code runs it (paper defaults; the
    fields in the order of its `auto_parameters`).

    Every `every`-th verification: `m = b1*m + (1-b1)*accepted/drafted`; raise the threshold by `e` while
    `m` is under the target `a`, hold it when the draft ran its full length, lower it otherwise; smooth
    with `b2`. Other verifications change nothing, `m` included.
    """

    every: int = 1
    b1: float = 0.5
    a: float = 0.90
    e: float = 0.01
    b2: float = 0.9
    matchness: float = field(default=0.0, init=False)
    steps: int = field(default=0, init=False)

    @classmethod
    def of(cls, config: SelfDraftConfig) -> AdaptiveThreshold | None:
        """The update `config` asks for (its `auto_parameters`), or None for a fixed threshold."""
        return cls(*config.auto_parameters) if config.auto_th_stop_draft else None

    def update(self, threshold: float, accepted: int, drafted: int, max_step_draft: int) -> float:
        self.steps += 1
        if self.steps % self.every:
            return threshold
        self.matchness = self.b1 * self.matchness + (1 - self.b1) * accepted / drafted
        if self.matchness < self.a:
            target = threshold + self.e
        elif drafted == max_step_draft:
            target = threshold
        else:
            target = threshold - self.e
        return self.b2 * threshold + (1 - self.b2) * target



@torch.no_grad()
def draft_tokens(
    model: LlamaForCausalLM,
    draft: Draft,
    cache: KVCache,
    last_token: int,
    committed: int,
    max_tokens: int,
    th_stop_draft: float,
    sampling: Sampling | None,
    generator: torch.Generator | None,
    head: DraftHead | None = None,
    alternatives: int = 0,
    margin: bool = False,
) -> tuple[list[int], torch.Tensor | None, list[int]]:
    """Up to `max_tokens` tokens from `draft`, stopping after the first whose probability is under
    `th_stop_draft` (greedy: the top one; sampled: the drawn token's under the draft's logits before
    temperature and filters, as the reference code's; greedy with `margin`: whose logit is less than
    `th_stop_draft` above the runner-up's, where the full model's argmax may differ). Writes the cache only at
    positions >= `committed`, only in the layers the draft runs. `head`: the
    draft scores only these tokens (the others get probability 0).

    Returns the tokens, when sampling their distributions `q` ([k, vocab]), and, greedy, where the
    draft stopped at a token under the threshold, the next `alternatives` likeliest tokens at its
    position, best first (the candidates for a branch there; none when no token fell under it).
    Each token stays on the device as the next step's input; greedy, the exit test is a step's one
    host sync, and the tokens are read once, at the end.
    """
    if max_tokens < 1:
        return [], None, []
    tokens, probs, uncertain = [], [], None
    token = torch.tensor([[last_token]], device=model.device)
    for step in range(max_tokens):
        logits = model(token, cache, committed + step, draft=draft, head=head)[0, -1]
        if sampling is None and margin:
            top = logits.topk(2)
            confidence, token = top.values[0] - top.values[1], top.indices[:1]
            token = token if head is None else head.ids(token)
        elif sampling is None:
            confidence, token = torch.softmax(logits, dim=-1).max(dim=-1)
            # A 1-element index, not a 0-d one (which PyTorch reads on the host).
            token = token if head is None else head.ids(token.view(1))
        else:
            if head is not None:
                logits = head.full_logits(logits, model.config.vocab_size)
            q = logits_to_probs(logits, sampling)
            token = sample(q, generator)
            confidence = torch.softmax(logits, dim=-1)[token]
            probs.append(q)
        token = token.to(model.device).view(1, 1)
        tokens.append(token)
        if confidence < th_stop_draft:
            uncertain = logits
            break
    drafted = torch.cat(tokens, dim=1)[0].tolist()
    others = []
    if uncertain is not None and sampling is None and alternatives > 0:
        ranked = uncertain.topk(min(alternatives + 1, uncertain.shape[-1])).indices
        ranked = (ranked if head is None else head.ids(ranked)).tolist()
        others = [token for token in ranked if token != drafted[-1]][:alternatives]
    return drafted, (torch.stack(probs) if probs else None), others


class SelfDraft:
    """Draft & Verify's drafting: `draft` proposes up to `max_step_draft` tokens, stopping after the
    first whose top probability is under the draft-exit threshold, which `adaptive` updates after
    each of its verifications (None: fixed). Offers the kind "draft".

    `exit_margin` (greedy): stop after a token whose logit is less than this above
    its runner-up's instead (a draft of the model's own weights is rejected where the two nearly tie,
    whatever its top probability); that threshold stays fixed. None, or sampling: the threshold above.
    `gated`: a gate chooses among this and other kinds of step (`ssd.methods.hybrid`): it offers nothing
    when the draft is the full model (it saves at most the trimmed head's share of a step, and its long
    drafts hold off lookups, which cost nothing), nor when no drafted token could be committed (one token
    left). Alone, as in the paper, it drafts at least one token every step, the last included, as the
    reference code does (its drafted and accepted counts are the reference's; the output is cut at
    `max_new_tokens` all the same), where the cache holds the row.
    A subclass may change `draft` between steps (SWIFT's does): each step drafts with the value then held.
    Its proposals are chains; a subclass that proposes trees learns its threshold as `BranchingDraft` does.
    """

    kind: StepKind = "draft"

    def __init__(self, draft: Draft, max_step_draft: int, th_stop_draft: float,
                 adaptive: AdaptiveThreshold | None = None, gated: bool = True,
                 exit_margin: float | None = None):
        self.draft, self.max_step_draft, self.th_stop_draft = draft, max_step_draft, th_stop_draft
        self.adaptive, self.gated, self.exit_margin = adaptive, gated, exit_margin

    @classmethod
    def of(cls, model: LlamaForCausalLM, config: SelfDraftConfig, draft: Draft | None = None,
           gated: bool = False) -> SelfDraft:
        """The self-draft `config` describes, drafting with `draft` (None: the model's `default_draft`),
        prepared (`prepare_draft`) so that no timed step builds its weights or graphs."""
        draft = model.default_draft if draft is None else draft
        return cls(model.prepare_draft(draft), config.max_step_draft, config.th_stop_draft, AdaptiveThreshold.of(config),
                   gated, config.exit_margin)

    def offer(self, step: Step) -> list[StepKind]:
        if self.gated and (step.room < 1 or self.draft.is_full_model):
            return []
        if step.room < 1 and step.committed + 2 > step.cache.max_len:  # no row for a draft past the end
            return []
        return [self.kind]

    def chain_room(self, step: Step) -> int:
        """The most tokens this step drafts: `max_step_draft`, within the step's room (alone: at least one)."""
        room = min(self.max_step_draft, step.room)
        return room if self.gated else max(room, 1)

    def propose(self, kind: StepKind, step: Step) -> Proposal:
        tokens, probs, _ = self.draft_chain(step)
        return Proposal(tokens, probs, passes=len(tokens) * draft_passes(self.draft, step.model))

    def observe(self, outcome: Outcome, step: Step) -> None:
        if outcome.kind == self.kind:
            self.learn(step, outcome.accepted, len(outcome.proposal.tokens))

    def draft_chain(self, step: Step, alternatives: int = 0) -> tuple[list[int], torch.Tensor | None, list[int]]:
        """`draft_tokens` from this step's last token, stopping by the threshold (greedy with `exit_margin`: by
        the margin); with `alternatives` (greedy), also the next likeliest tokens where it stopped."""
        by_margin = step.greedy and self.exit_margin is not None
        return draft_tokens(
            step.model, self.draft, step.cache, step.sequence[-1], step.committed, self.chain_room(step),
            self.exit_margin if by_margin else self.th_stop_draft, step.sampling, step.generator, step.head,
            alternatives if step.greedy else 0, by_margin,
        )

    def learn(self, step: Step, accepted: int, drafted: int) -> None:
        """The adaptive threshold's update after `accepted` of `drafted` chain tokens (fixed by a margin)."""
        if self.adaptive is not None and not (step.greedy and self.exit_margin is not None):
            self.th_stop_draft = self.adaptive.update(self.th_stop_draft, accepted, drafted, self.max_step_draft)


def draft_passes(draft: Draft, model: LlamaForCausalLM) -> float:
    """One draft token's cost in full-model passes: the share of sub-layers it runs, times the share of
    weight bytes its precision reads. Deterministic, unlike wall time."""
    return draft.depth(model.num_layers) * precision_bytes_share(draft.precision, model.dtype)
