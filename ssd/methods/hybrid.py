"""Hybrid drafting, ssd's default method (`hybrid`, greedy or sampled): Draft & Verify's self-draft (with
the model's default draft: on a CPU, its int4 copy) over a trimmed head, llama.cpp's draft on the model's own
GGUF where it is installed (a CPU), and prompt lookups, with the gate running whichever kind of step commits
tokens fastest on this machine. The paper's method alone is `essg`/`sss` (`ssd.methods.paper`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ssd.core.decoding import EosTokenIds, GenerationResult, OnTokens, speculative_decode
from ssd.core.draft import Draft
from ssd.core.modeling_llama import LlamaForCausalLM
from ssd.core.proposers import Proposer
from ssd.core.sampling import Sampling
from ssd.core.self_draft import SelfDraftConfig
from ssd.methods.gate import DraftGate
from ssd.methods.gguf_draft import GGUFDraftConfig, gguf_draft_proposers
from ssd.methods.lookup import LookupConfig, lookup_proposers
from ssd.methods.registry import register_method
from ssd.methods.tree import BranchingDraft, TreeConfig

# The default method's draft head: token ids below this, and the prompt's (`SelfDraftConfig.draft_vocab_size`).
TRIMMED_DRAFT_VOCAB = 16384


@dataclass(frozen=True)
class DraftConfig:
    """The default decoder's settings, by owner: the self-draft's (`SelfDraftConfig`), the lookups'
    (`LookupConfig`), the token trees' (`TreeConfig`), llama.cpp's draft on the model's GGUF
    (`GGUFDraftConfig`), and `gate`: each step runs the kind (plain, self-draft, GGUF draft, lookup per
    match length) that measurably commits tokens fastest (`DraftGate`), with no self-draft when the model
    skips nothing; off: a lookup when one matches, else a GGUF draft named by its path, else the self-draft.

    `DraftConfig.of(**options)` takes the settings by their own names (`max_step_draft=4, ngram_size=0`),
    as `ssd.generate` takes them as keywords.
    """

    self_draft: SelfDraftConfig = field(default_factory=lambda: SelfDraftConfig(draft_vocab_size=TRIMMED_DRAFT_VOCAB))
    lookup: LookupConfig = field(default_factory=LookupConfig)
    trees: TreeConfig = field(default_factory=TreeConfig)
    gguf: GGUFDraftConfig = field(default_factory=GGUFDraftConfig)
    gate: bool = True

    @staticmethod
    def option_names() -> tuple[str, ...]:
        """Every setting's own name, as `of` and `ssd.generate` take them."""
        parts = (SelfDraftConfig, LookupConfig, TreeConfig, GGUFDraftConfig)
        return ("gate", *(f.name for part in parts for f in dataclasses.fields(part)))

    @classmethod
    def of(cls, **options) -> DraftConfig:
        """The default settings, with `options` (each by its own name) given to their owners."""
        return cls().replace(**options)

    def replace(self, **options) -> DraftConfig:
        """These settings with `options` (each by its own name) changed."""
        if unknown := sorted(set(options) - set(self.option_names())):
            raise ValueError(f"unknown draft settings {unknown}; the settings are {', '.join(self.option_names())}")
        parts = {}
        for name, part in (("self_draft", self.self_draft), ("lookup", self.lookup), ("trees", self.trees),
                           ("gguf", self.gguf)):
            mine = {f.name: options[f.name] for f in dataclasses.fields(part) if f.name in options}
            parts[name] = dataclasses.replace(part, **mine) if mine else part
        return DraftConfig(**parts, gate=options.get("gate", self.gate))


def hybrid_proposers(model: LlamaForCausalLM, config: DraftConfig, draft: Draft | None = None) -> list[Proposer]:
    """Draft & Verify's self-draft (`draft`, None: the model's `default_draft`; ending in a tree with
    `branches`) and, unless `ngram_size` is 0, prompt lookup (SWIFT and CLaSp draft on these)."""
    if config.trees.lookup_ways > 1:
        model.prepare_trees()
    self_draft = BranchingDraft.of(model, config.self_draft, draft, config.gate, branches=config.trees.branches)
    return [self_draft, *lookup_proposers(config.lookup, config.trees.lookup_ways)]


def default_proposers(model: LlamaForCausalLM, config: DraftConfig, draft: Draft | None = None) -> list[Proposer]:
    """The proposers of `hybrid` (and, under `PAPER_CONFIG`, of `essg` and `sss`): `hybrid_proposers`', with the GGUF draft `config.gguf` asks for before
    the lookups (so that, the gate off, a matching lookup runs first).

    "auto" (with the gate on: nothing else measures whether it pays) adds llama.cpp's draft of the model's own
    GGUF where the self-draft skips no sub-layer, and it then replaces the self-draft: both are the whole
    model at low precision, llama.cpp's at a third to half the cost per token, and mixed under the gate they
    lose to it alone (each probe of the self-draft leaves llama.cpp's cache tokens to catch up on;
    docs/benchmarks.md, "The GGUF draft"). A draft that skips sub-layers is left alone: that is Draft &
    Verify's own setting. A GGUF named by its path is offered beside the self-draft."""
    self_draft, *lookups = hybrid_proposers(model, config, draft)
    if config.gguf.gguf_draft != "auto":
        return [self_draft, *gguf_draft_proposers(model, config.self_draft, config.gguf), *lookups]
    if not config.gate or self_draft.draft.attention or self_draft.draft.mlp:
        return [self_draft, *lookups]
    gguf = gguf_draft_proposers(model, config.self_draft, config.gguf)
    return [*(gguf or [self_draft]), *lookups]


def gate_of(config: DraftConfig) -> DraftGate | None:
    """A fresh gate where `config.gate` asks for one; off, the last kind offered runs (a lookup when one matched)."""
    return DraftGate() if config.gate else None


def hybrid_generate(
    model: LlamaForCausalLM,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: EosTokenIds = None,
    config: DraftConfig = DraftConfig(),
    sampling: Sampling | None = None,
    generator: torch.Generator | None = None,
    *,
    draft: Draft | None = None,
    proposers: list[Proposer] | None = None,
    gate: DraftGate | None = None,
    on_tokens: OnTokens | None = None,
) -> GenerationResult:
    """The default method: greedy (`sampling` None; output equals `base_generate`'s token for token wherever a
    verification's logits rank tokens as a one-token step's do, docs/numerics.md) or sampled (distributed
    exactly as sampling the full model; the same `generator` state gives the same tokens: the gate then
    decides from counted passes, not wall time). `proposers` None: `default_proposers(model, config, draft)`;
    `gate` None: `gate_of(config)`. Arguments as `speculative_decode`'s."""
    if proposers is None:
        proposers = default_proposers(model, config, draft)
    elif draft is not None:
        raise ValueError("draft= is for the default proposers; a given proposer holds its own draft")
    if gate is not None and not config.gate:
        raise ValueError("a DraftGate was given but the DraftConfig's gate is False")
    return speculative_decode(model, input_ids, max_new_tokens, eos_token_id, config.self_draft, sampling, generator,
                              proposers=proposers, gate=gate if gate is not None else gate_of(config),
                              on_tokens=on_tokens)


register_method("hybrid", default_proposers, config=DraftConfig())
