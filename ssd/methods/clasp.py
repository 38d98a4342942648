"""CLaSp-style layer selection (Chen et al., ACL 2025, arXiv 2505.24196): the draft's skip set chosen
again during generation from the hidden states a verification already computed, by dynamic programming.

After a verification, the full model's residual stream entering each layer is known at the last
accepted position (`Outcome.hidden`, kept when the proposal asked for it). The selection
(`select_skip_set`) walks the layers with, for each amount of skipped cost `j`, the one draft state
that skipping `j` so far kept closest to the full model's (cosine similarity at each layer's output):
at layer i every state either runs the layer, skips its attention, skips its MLP, or skips both
(KnapSpec's point: the two sub-layers cost very differently), and of the candidates landing on the
same `j` the most similar survives. The blocks run at the draft's precision, so the set is chosen on
top of the int4 copies the draft decodes with; each state attends over the full model's keys and
values of the earlier positions and its own. The state with the most cost skipped, up to
`skip_share` of the layers' cost, gives the next draft.

`ClaspDraft` offers that draft as the gate's kind "clasp", beside the model's static draft ("draft")
and the lookups, so the gate runs whichever commits tokens fastest and clasp is never kept where it
loses. A selection runs inside a clasp step's `propose` (its time is that step's cost in the gate),
every `interval` clasp steps, and only while what selecting has cost on this input is at most
`budget` times what drafted steps saved over plain ones, both counted in model passes. Output stays
exact: verification decides every token.

docs/design.md ("CLaSp") sets the paper's choices beside these.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssd.core.checks import check_count
from ssd.core.draft import Draft, precision_bytes_share
from ssd.core.modeling_llama import KVCache, LlamaDecoderLayer, LlamaForCausalLM
from ssd.core.proposers import Outcome, Proposal, Proposer, Step, StepKind
from ssd.core.self_draft import AdaptiveThreshold, SelfDraft
from ssd.methods.budget import Budget, check_share
from ssd.methods.hybrid import DraftConfig, hybrid_proposers
from ssd.methods.registry import register_method


@dataclass(frozen=True)
class ClaspConfig:
    """`skip_share`: the most of the middle layers' cost (weight bytes) a selected draft skips, on top
    of its precision. `interval`: clasp steps from one selection to the next. `budget`: selections run
    while their cost is at most this share of what drafting saved on the input (None: always)."""

    skip_share: float = 0.1
    interval: int = 16
    budget: float | None = 0.5

    def __post_init__(self):
        if not 0 < self.skip_share < 1:
            raise ValueError(f"skip_share must be in (0, 1), got {self.skip_share!r}")
        check_count("interval", self.interval)
        check_share("budget", self.budget)


@dataclass(frozen=True)
class SubLayerWeights:
    """Integer costs for the selection: an attention and an MLP sub-layer in units of the smaller
    (their weight bytes, which bound a one-token step on a CPU), and how many units may be skipped."""

    attention: int
    mlp: int
    capacity: int

    @classmethod
    def of(cls, model: LlamaForCausalLM, skip_share: float) -> SubLayerWeights:
        layer = model.model.layers[0]
        attention = sum(p.numel() for p in layer.self_attn.parameters())
        mlp = sum(p.numel() for p in layer.mlp.parameters())
        unit = min(attention, mlp)
        weights = max(1, round(attention / unit)), max(1, round(mlp / unit))
        middle = max(model.num_layers - 2, 1)
        return cls(*weights, capacity=max(1, int(skip_share * middle * sum(weights))))


def candidate_attention(layer: LlamaDecoderLayer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                        cache: KVCache, index: int, position: int, low_bit) -> torch.Tensor:
    """`x + attention(norm(x))` for B candidate states `x` ([B, H]) all at `position`: each attends over
    the cache's keys and values below `position` (the full model's) and its own, and none is written."""
    attn = layer.self_attn
    n_heads, n_kv, head_dim = attn.n_heads, attn.n_kv_heads, attn.head_dim
    group, rows = n_heads // n_kv, x.shape[0]
    # The B candidates as one pass's rows, all at one position (cos and sin broadcast over them).
    q, k, v = attn.project(layer.input_layernorm(x[None]), cos, sin, low_bit)  # [1, heads, B, D]
    q = q[0].view(n_kv, group, rows, head_dim).permute(2, 0, 1, 3)  # [B, KV, G, D]
    k, v = k[0].permute(1, 0, 2)[:, :, None], v[0].permute(1, 0, 2)[:, :, None]  # [B, KV, 1, D]
    keys, values = cache.keys[index][0, :, :position], cache.values[index][0, :, :position]  # [KV, P, D]
    scale = head_dim**-0.5
    q_rows = q.permute(1, 0, 2, 3).reshape(n_kv, rows * group, head_dim)
    context = (q_rows @ keys.transpose(-1, -2)).float() * scale  # [KV, B*G, P]
    own = (q * k).sum(-1).float().permute(1, 0, 2).reshape(n_kv, rows * group, 1) * scale
    weights = torch.softmax(torch.cat([context, own], dim=-1), dim=-1).to(x.dtype)
    own_values = v.expand(rows, n_kv, group, head_dim).permute(1, 0, 2, 3).reshape(n_kv, rows * group, head_dim)
    y = weights[..., :-1] @ values + weights[..., -1:] * own_values  # [KV, B*G, D]
    y = y.view(n_kv, rows, group, head_dim).permute(0, 2, 1, 3).reshape(1, n_heads, rows, head_dim)
    return x + attn.output(y, low_bit)[0]


@torch.no_grad()
def select_skip_set(model: LlamaForCausalLM, hidden: list[torch.Tensor], cache: KVCache, position: int,
                    precision: str | None, weights: SubLayerWeights) -> tuple[Draft, float]:
    """CLaSp's dynamic programming over the layers (module docstring): `hidden[i]` ([H]) is the full
    model's residual stream entering layer i at `position` (`hidden[L]`: leaving the last). Returns the
    draft at `precision` skipping the most cost up to `weights.capacity`, and its final state's cosine
    similarity to the full model's. Layers 0 and L-1 always run."""
    num_layers = model.num_layers
    low_bit = [None] * num_layers if precision is None else model.low_bit.at(model, precision)
    cos, sin = model.rope_tables()
    dtype = hidden[0].dtype
    cos, sin = cos[position].to(dtype), sin[position].to(dtype)
    # skipped cost -> (state, skipped attention layers, skipped MLP layers)
    states: dict[int, tuple[torch.Tensor, tuple[int, ...], tuple[int, ...]]] = {0: (hidden[0], (), ())}
    for i, layer in enumerate(model.model.layers):
        device = layer.self_attn.q_proj.weight.device  # a split model's layers sit on several devices
        costs = sorted(states)
        x = torch.stack([states[j][0] for j in costs]).to(device)
        after_attention = candidate_attention(layer, x, cos.to(device), sin.to(device), cache, i, position, low_bit[i])
        mlp_inputs = torch.cat([after_attention, x]) if 0 < i < num_layers - 1 else after_attention
        after_mlp = mlp_inputs + layer.mlp(layer.post_attention_layernorm(mlp_inputs[None]), low_bit[i])[0]
        rows = len(costs)
        # Candidates: (skipped cost, state, attention skipped?, MLP skipped?)
        candidates = [(j, after_mlp[b], False, False) for b, j in enumerate(costs)]
        if 0 < i < num_layers - 1:
            candidates += [(j + weights.attention, after_mlp[rows + b], True, False) for b, j in enumerate(costs)]
            candidates += [(j + weights.mlp, after_attention[b], False, True) for b, j in enumerate(costs)]
            candidates += [(j + weights.attention + weights.mlp, x[b], True, True) for b, j in enumerate(costs)]
        candidates = [c for c in candidates if c[0] <= weights.capacity]
        similarity = F.cosine_similarity(torch.stack([c[1] for c in candidates]).float(),
                                         hidden[i + 1].to(device).float()[None], dim=-1)
        best: dict[int, tuple[float, int]] = {}
        for n, ((j, *_rest), value) in enumerate(zip(candidates, similarity.tolist())):
            if j not in best or value > best[j][0]:
                best[j] = (value, n)
        new_states = {}
        for j, (_, n) in best.items():
            _, state, skip_attention, skip_mlp = candidates[n]
            source = j - weights.attention * skip_attention - weights.mlp * skip_mlp
            _, attention, mlp = states[source]
            new_states[j] = (state, attention + (i,) * skip_attention, mlp + (i,) * skip_mlp)
        states = new_states
    most = max(states)
    state, attention, mlp = states[most]
    similarity = float(F.cosine_similarity(state.float(), hidden[num_layers].to(state.device).float(), dim=0))
    return Draft.skipping(attention, mlp, precision), similarity


def selection_passes(model: LlamaForCausalLM, precision: str | None) -> float:
    """What a selection costs in full-model passes, as the budget and a sampled gate count it: each
    middle layer's blocks run once at the draft's precision over a few rows, about one draft pass, and
    the MLP's second batch of rows about doubles that (measured: docs/design.md, "CLaSp")."""
    return 2 * precision_bytes_share(precision, model.dtype)


class ClaspDraft(SelfDraft):
    """The self-draft whose skip set CLaSp's selection chooses again every `config.interval` of its
    steps, starting from `draft` (the model's static draft): the gate's kind "clasp"."""

    kind: StepKind = "clasp"

    def __init__(self, model: LlamaForCausalLM, draft: Draft, max_step_draft: int, th_stop_draft: float,
                 adaptive: AdaptiveThreshold | None = None, config: ClaspConfig = ClaspConfig()):
        super().__init__(draft, max_step_draft, th_stop_draft, adaptive, gated=False)
        self.config, self.precision = config, draft.precision
        self.weights = SubLayerWeights.of(model, config.skip_share)
        self.cost = selection_passes(model, draft.precision)
        self.pending: tuple[list[torch.Tensor], int] | None = None  # (hidden states, position) to select from
        self.since = config.interval - 1  # clasp steps since the last selection: the first asks at once
        self.budget = Budget(config.budget)  # in passes, on this input
        self.selections = 0
        self.similarity: float | None = None  # the last selected draft's, to the full model's state
        self._selecting = 0.0  # passes of the selection in the proposal being verified

    def propose(self, kind: StepKind, step: Step) -> Proposal:
        passes = 0.0
        if self.pending is not None:
            hidden, position = self.pending
            self.draft, self.similarity = select_skip_set(step.model, hidden, step.cache, position, self.precision, self.weights)
            self.pending, self.since = None, 0
            self.budget.spend(self.cost)
            self.selections += 1
            passes = self.cost
        else:
            self.since += 1
        self._selecting = passes
        proposal = super().propose(kind, step)
        keep = self.since + 1 >= self.config.interval and self.budget.allows()
        return Proposal(proposal.tokens, proposal.probs, proposal.passes + passes, keep_hidden=keep, tree=proposal.tree)

    def observe(self, outcome: Outcome, step: Step) -> None:
        super().observe(outcome, step)
        if outcome.kind != "plain":  # drafting's saving, the selection's cost aside (it is spent)
            selecting = self._selecting if outcome.kind == self.kind else 0.0
            self.budget.credit(outcome.accepted, outcome.proposal.passes - selecting)
        if outcome.kind == self.kind and outcome.hidden is not None:
            row = outcome.accepted  # the last committed token: its position's keys are the full model's
            self.pending = [h[0, row] for h in outcome.hidden], step.committed + row


def clasp_proposers(model: LlamaForCausalLM, config: DraftConfig, draft: Draft | None = None) -> list[Proposer]:
    """`method="clasp"`: the static draft ("draft": `draft`, None the model's default), CLaSp's draft
    starting from it ("clasp"), then the lookups; the gate runs whichever pays."""
    static, *lookups = hybrid_proposers(model, config, draft)
    settings = config.self_draft
    clasp = ClaspDraft(model, static.draft, settings.max_step_draft, settings.th_stop_draft,
                       AdaptiveThreshold.of(settings))
    return [static, clasp, *lookups]


register_method("clasp", clasp_proposers)
