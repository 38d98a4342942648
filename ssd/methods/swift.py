"""SWIFT (Xia et al., ICLR 2025, arXiv 2410.06916): the draft's skip set chosen on the fly, during generation.

No skip set is needed up front. While an *optimisation phase* lasts, every
`opt_interval`-th decoding step first proposes one candidate skip set of a
fixed size, `int((L-2) * 2 * skip_ratio)` sub-layers (layers 0 and L-1 are
never skipped), drawn at random or, every `bayes_interval`-th iteration, from
a Gaussian process fitted to all scores so far (its top-scoring variables
become the set). The candidate is scored in one teacher-forced draft pass over
the first `context_window` tokens the full model generated, all positions at
once: the score is the share of positions where the draft's argmax is the next
generated token. The best set so far is the model's draft. Optimisation stops
when the best score passes `max_score` (counted only over a full window),
after `max_tolerance_iter` iterations without improvement, or after
`max_opt_iter` iterations. The *acceleration phase* then drafts with the best
set, stopping when the draft's confidence falls under 0.8 (up to 25 tokens).

One `SwiftOptimizer` serves a stream of inputs (the paper's setting): its
best set, its iteration counts and its `DraftGate` (what each kind of step
was measured to pay) carry over from one prompt to the next. Each
input drafts through a `SwiftDraft` proposer (`ssd.core.proposers`): before it
offers its draft it lets the optimiser score a candidate on the text so far,
then drafts with the best set as a `Draft` value; the model is never changed.
Output stays exact: greedy output is `base`'s, sampled output keeps the full
model's distribution.

ssd's one departure, so that SWIFT is never slower than `base`: SWIFT's best
set is the gate's kind "swift", beside the model's static draft ("draft":
the `skip_layers.json` entry, or the int4 draft skipping nothing) and the
lookups, and the gate runs whichever commits tokens fastest. With no best
set yet, the static draft and lookups decode (the paper's code starts from
every other layer skipped, a draft that rarely pays). And optimising is paid
for out of what drafting saved: an iteration runs only while the seconds
(passes, when sampling) spent optimising on this input are at most
`opt_budget` times what its non-plain steps saved against the gate's
measured plain step, so each input pays for its own optimising. Where
optimising pays it runs on as in the paper; where it does not, it stops
spending. `opt_budget=None` optimises without a budget.

Cache: the best set for a (model, task) is stored in `skip_layers.json` under
`"<model key>/swift/<task>"` (e.g. `"smollm2-135m-instruct/swift/cnndm"`),
with its score and iteration count; with `cache_hit=True` a stored set is
reused and no optimisation runs. The entry is read again at each input, so a
cached stream follows a cold stream that keeps improving it.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ssd.core.checks import check_count
from ssd.core.decoding import EosTokenIds, GenerationResult, OnTokens, speculative_decode
from ssd.core.draft import Draft
from ssd.core.modeling_llama import KVCache, LlamaForCausalLM
from ssd.core.proposers import Outcome, Proposer, Step, StepKind
from ssd.core.sampling import Sampling
from ssd.core.searching import bayesian_optimizer, variable_names
from ssd.core.self_draft import AdaptiveThreshold, SelfDraft, draft_passes
from ssd.core.skip_layers import DEFAULT_PATH, read_skip_layers, save_skip_layers
from ssd.loading.keys import model_key as key_of  # `model_key` is also an argument here
from ssd.methods.budget import Budget, check_share
from ssd.methods.hybrid import DraftConfig, gate_of, hybrid_proposers

MIN_WINDOW = 1  # scored positions needed (two generated tokens) before a candidate is scored at all


def swift_draft_config() -> DraftConfig:
    """SWIFT's acceleration phase: a fixed confidence threshold of 0.8, up to 25 draft tokens."""
    return DraftConfig.of(max_step_draft=25, th_stop_draft=0.8, auto_th_stop_draft=False)


@dataclass(frozen=True)
class SwiftConfig:
    """SWIFT's parameters, named and defaulted as in the paper's code (docs/design.md, SWIFT).

    `draft`: how the acceleration phase drafts. `alpha`, `kappa`: the Gaussian
    process's noise term and UCB exploration. `seed`: random candidates and GP.
    `opt_budget`: ssd's, not the paper's. With the gate on, an optimisation
    iteration runs only while what optimising has spent is at most this share
    of what drafted steps have saved over plain steps (module docstring);
    None: optimise whenever the paper's rules say so, whatever it costs.
    """

    opt_interval: int = 1
    bayes_interval: int = 25
    skip_ratio: float = 0.45
    context_window: int = 50
    max_score: float = 0.93
    max_tolerance_iter: int = 300
    max_opt_iter: int = 1000
    draft: DraftConfig = field(default_factory=swift_draft_config)
    alpha: float = 1e-2
    kappa: float = 2.5
    seed: int = 0
    opt_budget: float | None = 0.5

    def __post_init__(self):
        for name in ("opt_interval", "bayes_interval", "context_window", "max_tolerance_iter", "max_opt_iter"):
            check_count(name, getattr(self, name))
        if self.context_window < MIN_WINDOW:
            raise ValueError(f"context_window must be >= {MIN_WINDOW}, got {self.context_window}")
        if not 0 < self.skip_ratio < 1:
            raise ValueError(f"skip_ratio must be in (0, 1), got {self.skip_ratio!r}")
        if not 0 < self.max_score <= 1:
            raise ValueError(f"max_score must be in (0, 1], got {self.max_score!r}")
        if not isinstance(self.draft, DraftConfig):
            raise ValueError(f"draft must be a DraftConfig, got {type(self.draft).__name__}")
        if self.alpha <= 0 or self.kappa < 0:
            raise ValueError(f"need alpha > 0 and kappa >= 0, got {self.alpha!r}, {self.kappa!r}")
        check_share("opt_budget", self.opt_budget)

    def num_skipped(self, num_layers: int) -> int:
        """Sub-layers every candidate skips: `int((L-2) * 2 * skip_ratio)`, at least one."""
        if num_layers < 3:
            raise ValueError(f"SWIFT needs at least 3 layers (the first and last are never skipped), got {num_layers}")
        return max(1, int((num_layers - 2) * 2 * self.skip_ratio))


@dataclass(frozen=True)
class SwiftStep:
    """One decoding step as the optimiser saw it (for plots and the share of steps spent optimising)."""

    step: int  # decoding steps over the whole stream
    input: int  # which input of the stream
    optimized: bool  # a candidate was scored before this step
    window: int  # positions scored
    candidate_score: float | None
    best_score: float | None  # the best set's score (on this window when optimising)
    seconds: float  # time spent in the optimiser before this step
    passes: int = 0  # scoring passes run before this step (a candidate's, and the incumbent's again)
    held: bool = False  # an iteration was due but the budget held it


def cache_key(model_key: str, task: str) -> str:
    """The skip_layers.json entry of SWIFT's set for a model and task."""
    if not task or "/" in task:
        raise ValueError(f"task must be a non-empty name without '/', got {task!r}")
    return f"{model_key}/swift/{task}"


class SwiftOptimizer:
    """SWIFT's state over a stream of inputs: the best set so far, the Gaussian process, the gate.

    `task`: names the cache entry (`cache_key`); with `cache_hit` and a stored
    entry the stored set is used and nothing is optimised, otherwise the best
    set is saved to `skip_layers_path` after every input that improved it.
    """

    def __init__(
        self,
        model: LlamaForCausalLM,
        config: SwiftConfig = SwiftConfig(),
        task: str | None = None,
        cache_hit: bool = False,
        skip_layers_path: str | Path = DEFAULT_PATH,
        model_key: str | None = None,
    ):
        if cache_hit and task is None:
            raise ValueError("cache_hit needs a task: the cache holds one set per (model, task)")
        self.model, self.config = model, config
        self.num_layers = model.num_layers
        self.num_skipped = config.num_skipped(self.num_layers)
        # One variable per sub-layer that may be skipped: layers 1..L-2, attention then MLP.
        middle = {f"{kind}{i:0{len(str(self.num_layers - 1))}d}" for kind in "am" for i in range(1, self.num_layers - 1)}
        self.names = [name for name in variable_names(self.num_layers) if name in middle]
        self.rng = np.random.default_rng(config.seed)
        self.gp = bayesian_optimizer(self.names, config.kappa, config.alpha, config.seed)
        self.skip_layers_path = Path(skip_layers_path)
        self.key = cache_key(model_key or key_of(model.name_or_path), task) if task is not None else None
        self.best: tuple[list[int], list[int]] | None = None
        self.best_score: float | None = None
        self.best_window = (-1, 0)  # (input, window) the best score was measured on
        self.iterations = 0  # candidates scored
        self.tolerance = 0  # iterations since the best last improved
        self.stop_reason: str | None = None
        self.cache_hit = False
        self.history: list[SwiftStep] = []
        self.inputs = 0
        self._input_step = 0
        self._unsaved = False
        self._scratch: tuple[tuple, KVCache] | None = None  # (what it copied, cache) for `score`, see there
        self.gate = gate_of(config.draft)
        self._gated_set: tuple[list[int], list[int]] | None = None  # the set the gate measured as "swift"
        self.precision: str | None = model.default_draft.precision  # the candidates' weights, read at each input
        # In the gate's units (seconds greedy, passes sampling), against the gate's measured plain step:
        # without the gate there is no plain step to compare with, so no budget.
        self.budget = Budget(config.opt_budget if self.gate is not None else None)
        if cache_hit and self._read_cache():
            self.stop_reason, self.cache_hit = "cache hit", True

    def _read_cache(self) -> bool:
        """Take the stored set as the best, when the entry exists; says whether it did."""
        if not self.skip_layers_path.is_file():
            return False
        entry = read_skip_layers(self.skip_layers_path).get(self.key)
        if entry is None:
            return False
        self.best = (list(entry["attention"]), list(entry["mlp"]))
        self.best_score = entry.get("score")
        return True

    @property
    def optimizing(self) -> bool:
        return self.stop_reason is None

    def credit(self, outcome: Outcome, sampling: bool) -> None:
        """Count what a step saved (or lost) against a plain step: its committed tokens at the plain
        step's measured cost per token, less what it cost. Plain steps save nothing."""
        if outcome.kind == "plain" or self.gate is None:
            return
        if sampling:
            per_token = 1.0  # a plain step is one pass
        elif "plain" in self.gate.seconds:
            per_token = self.gate.seconds["plain"] / self.gate.tokens["plain"]
        else:
            return  # nothing to compare with yet
        self.budget.credit((outcome.accepted + 1) * per_token, outcome.cost)

    # -- one input ----------------------------------------------------------

    def begin_input(self) -> None:
        """A new input of the stream starts: the best set's score must be measured again on its text,
        a cached set is read again, and the candidates run at the model's default draft precision as
        it is now."""
        self.inputs += 1
        self._input_step = 0
        self.budget = Budget(self.budget.share)  # each input pays for its own optimising
        self.precision = self.model.default_draft.precision
        if self.cache_hit:
            self._read_cache()
        self._gate_follows_best()

    def _gate_follows_best(self) -> None:
        """The gate measures the "swift" kind afresh whenever the best set changes."""
        if self.gate is not None and self.best != self._gated_set:
            self.gate.forget(SwiftDraft.kind)
            self._gated_set = self.best

    def draft(self) -> Draft | None:
        """The best set so far at `precision`; None before any candidate was scored."""
        return None if self.best is None else Draft.skipping(*self.best, self.precision)

    def end_input(self) -> None:
        """Store the best set when it improved during this input (and a task names the entry)."""
        if self.key is not None and self._unsaved and self.best is not None:
            save_skip_layers(
                self.key, *self.best, path=self.skip_layers_path, score=round(self.best_score, 4),
                iterations=self.iterations, skip_ratio=self.config.skip_ratio,
                context_window=self.config.context_window, source="ssd.methods.swift",
            )
            self._unsaved = False

    @torch.no_grad()
    def optimize(self, step: Step) -> None:
        """Before a decoding step: maybe score one candidate on the text generated so far, if the
        paper's rules and the budget allow; its cost is charged to the budget."""
        start = time.perf_counter()
        cache, committed, tokens = step.cache, step.committed, step.output
        index, self._input_step = self._input_step, self._input_step + 1
        window = min(self.config.context_window, len(tokens) - 1)
        candidate_score, passes = None, 0
        due = self.optimizing and index % self.config.opt_interval == 0 and window >= MIN_WINDOW
        held = due and not self.budget.allows()
        if due and not held:
            candidate_score, passes = self._iterate(cache, committed, tokens, window)
            self._gate_follows_best()
        seconds = time.perf_counter() - start
        if candidate_score is not None:
            self.budget.spend(passes * draft_passes(self.draft(), self.model) if not step.greedy else seconds)
        self.history.append(SwiftStep(
            len(self.history), self.inputs - 1, candidate_score is not None, window if candidate_score is not None else 0,
            candidate_score, self.best_score, seconds, passes, held,
        ))

    def _iterate(self, cache: KVCache, committed: int, tokens: list[int], window: int) -> tuple[float, int]:
        """One optimisation iteration: propose, score, keep if better, apply the stopping rules.
        Returns the candidate's score and the scoring passes run."""
        prompt_length = committed - (len(tokens) - 1)
        scored_on = (self.inputs, window)
        scores = 1
        if self.best is not None and self.best_window != scored_on:
            # The incumbent was scored on other text or a shorter window: compare like with like.
            self.best_score = self.score(self.best, cache, prompt_length, tokens, window)
            self.best_window = scored_on
            scores += 1
        params, candidate = self._propose()
        score = self.score(candidate, cache, prompt_length, tokens, window)
        self.gp.register(params=params, target=score)
        self.iterations += 1
        if self.best_score is None or score > self.best_score:
            self.best, self.best_score, self.best_window = candidate, score, scored_on
            self.tolerance, self._unsaved = 0, True
        else:
            self.tolerance += 1
        if self.best_score > self.config.max_score and window == self.config.context_window:
            self.stop_reason = "max_score"
        elif self.tolerance >= self.config.max_tolerance_iter:
            self.stop_reason = "max_tolerance_iter"
        elif self.iterations >= self.config.max_opt_iter:
            self.stop_reason = "max_opt_iter"
        return score, scores

    def _propose(self) -> tuple[dict[str, float], tuple[list[int], list[int]]]:
        """A candidate of `num_skipped` sub-layers: from the GP every `bayes_interval`-th iteration, else random."""
        if (self.iterations + 1) % self.config.bayes_interval == 0 and len(self.gp.space) > 0:
            params = {name: float(value) for name, value in self.gp.suggest().items()}
            chosen = sorted(self.names, key=lambda name: params[name], reverse=True)[: self.num_skipped]
        else:
            chosen = list(self.rng.choice(self.names, self.num_skipped, replace=False))
            params = {name: 1.0 if name in chosen else 0.0 for name in self.names}
        attention = sorted(int(name[1:]) for name in chosen if name[0] == "a")
        mlp = sorted(int(name[1:]) for name in chosen if name[0] == "m")
        return params, (attention, mlp)

    @torch.no_grad()
    def score(self, skip_layers, cache: KVCache, prompt_length: int, tokens: list[int], window: int) -> float:
        """Teacher-forced draft pass over `tokens[:window]` at their real positions, over the full
        model's keys and values of the prompt: the share of positions whose argmax is the next
        generated token.

        The generation's cache is only read: the pass runs on the optimiser's scratch cache, which
        holds a copy of the prompt's positions (made once per input) and takes the draft's own keys
        and values above them.
        """
        scratch = self._scratch_cache(cache, prompt_length)
        device = cache.keys[0].device
        inputs = torch.tensor([tokens[:window]], device=device)
        targets = torch.tensor(tokens[1 : window + 1], device=device)
        logits = self.model(inputs, scratch, prompt_length, draft=Draft.skipping(*skip_layers, self.precision))[0]
        return float((logits.argmax(dim=-1) == targets).float().mean())

    def _scratch_cache(self, cache: KVCache, prompt_length: int) -> KVCache:
        """A cache of the prompt's positions and a window's beyond them, the prompt's copied from
        `cache` (again only when the input, or the cache, changed)."""
        copied = (self.inputs, prompt_length, id(cache))
        if self._scratch is None or self._scratch[0] != copied:
            scratch = self.model.new_cache(prompt_length + self.config.context_window + 1)
            for mine, theirs in zip(scratch.keys + scratch.values, cache.keys + cache.values):
                mine[:, :, :prompt_length] = theirs[:, :, :prompt_length]
            self._scratch = copied, scratch
        return self._scratch[1]

    # -- reporting ----------------------------------------------------------

    def stats(self, since_step: int = 0) -> dict:
        """What the optimiser did: over the history from `since_step` on, and its state now."""
        steps = self.history[since_step:]
        return {
            "optimizing": self.optimizing,
            "stop_reason": self.stop_reason,
            "cache_hit": self.cache_hit,
            "opt_steps": sum(s.optimized for s in steps),
            "opt_passes": sum(s.passes for s in steps),
            "budget_held": sum(s.held for s in steps),
            "steps": len(steps),
            "opt_seconds": sum(s.seconds for s in steps),
            "spent": self.budget.spent,
            "saved": self.budget.saved,
            "iterations": self.iterations,
            "best_score": self.best_score,
            "skip_layers": self.best,
            "history": [dataclasses.asdict(s) for s in steps],
        }


class SwiftDraft(SelfDraft):
    """SWIFT's self-draft for one input of its stream, offered as the gate's kind "swift": before each
    offer the optimiser may score a candidate set (`SwiftOptimizer.optimize`), and the draft is then
    its best set as it stands (nothing offered before there is one). Every step's outcome is credited
    to the optimiser's budget."""

    kind: StepKind = "swift"

    def __init__(self, optimizer: SwiftOptimizer, config: DraftConfig):
        settings = config.self_draft
        super().__init__(optimizer.draft() or Draft(), settings.max_step_draft, settings.th_stop_draft,
                         AdaptiveThreshold.of(settings), gated=True)
        self.optimizer = optimizer

    def offer(self, step: Step) -> list[StepKind]:
        self.optimizer.optimize(step)
        best = self.optimizer.draft()
        if best is None:
            return []
        self.draft = best
        return super().offer(step)

    def observe(self, outcome: Outcome, step: Step) -> None:
        super().observe(outcome, step)
        self.optimizer.credit(outcome, not step.greedy)


def swift_generate(
    model: LlamaForCausalLM,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: EosTokenIds,
    optimizer: SwiftOptimizer,
    sampling: Sampling | None = None,
    generator: torch.Generator | None = None,
    on_tokens: OnTokens | None = None,
) -> GenerationResult:
    """One input of a SWIFT stream: greedy when `sampling` is None, else sampled; exact either way.

    Proposers, in the gate's order: the model's default draft as it stands (the static set from
    `skip_layers.json`, or the int4 draft with nothing skipped: "draft"), SWIFT's best set ("swift"),
    then lookups. With the gate off the last offered runs, so SWIFT's set once it has one. The model's
    default draft is never changed (SWIFT's set lives in `optimizer`)."""
    if optimizer.model is not model:
        raise ValueError("the SwiftOptimizer belongs to another model")
    optimizer.begin_input()
    config = optimizer.config.draft
    static, *lookups = hybrid_proposers(model, config)
    proposers: list[Proposer] = [static, SwiftDraft(optimizer, config), *lookups]
    result = speculative_decode(model, input_ids, max_new_tokens, eos_token_id, config.self_draft, sampling, generator,
                                proposers=proposers, gate=optimizer.gate, on_tokens=on_tokens)
    optimizer.end_input()
    return result
