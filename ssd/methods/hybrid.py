"""Hybrid drafting, the default decoder (`essg` greedy, `sss` sampled): Draft & Verify's self-draft and
prompt lookups, with the gate running whichever kind of step commits tokens fastest on this machine."""

from __future__ import annotations

import torch

from ssd.core.decoding import DraftConfig, EosTokenIds, GenerationResult, OnTokens, speculative_decode
from ssd.core.draft import Draft
from ssd.core.modeling_llama import LlamaForCausalLM
from ssd.core.proposers import Proposer
from ssd.core.registry import register_method
from ssd.core.sampling import Sampling
from ssd.core.self_draft import SelfDraft
from ssd.methods.gate import DraftGate
from ssd.methods.lookup import lookup_proposers


def hybrid_proposers(model: LlamaForCausalLM, config: DraftConfig, draft: Draft | None = None) -> list[Proposer]:
    """Draft & Verify's self-draft (`draft`, None: the model's `default_draft`) and, unless
    `config.ngram_size` is 0, prompt lookup: the proposers of `essg` and `sss`."""
    if config.lookup_ways > 1:
        model.prepare_trees()
    return [SelfDraft.of(model, config, draft), *lookup_proposers(config)]


def gate_of(config: DraftConfig) -> DraftGate | None:
    """A fresh gate where `config.gate` asks for one; off, the last kind offered runs (a lookup when one matched)."""
    return DraftGate() if config.gate else None


def exact_self_speculative_generate(
    model: LlamaForCausalLM,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: EosTokenIds = None,
    config: DraftConfig = DraftConfig(),
    *,
    draft: Draft | None = None,
    proposers: list[Proposer] | None = None,
    gate: DraftGate | None = None,
    on_tokens: OnTokens | None = None,
) -> GenerationResult:
    """Greedy self-speculative decoding: output equals `base_generate`'s token for token wherever a
    verification's logits rank tokens as a one-token step's do (docs/numerics.md says where that holds).
    `proposers` None: `hybrid_proposers(model, config, draft)`; `gate` None: `gate_of(config)`."""
    return self_speculative_sample(model, input_ids, max_new_tokens, eos_token_id, config, None, None, draft=draft,
                                   proposers=proposers, gate=gate, on_tokens=on_tokens)


def self_speculative_sample(
    model: LlamaForCausalLM,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: EosTokenIds = None,
    config: DraftConfig = DraftConfig(),
    sampling: Sampling | None = Sampling(),
    generator: torch.Generator | None = None,
    *,
    draft: Draft | None = None,
    proposers: list[Proposer] | None = None,
    gate: DraftGate | None = None,
    on_tokens: OnTokens | None = None,
) -> GenerationResult:
    """Self-speculative sampling: output distributed exactly as sampling the full model. The same
    `generator` state gives the same tokens: the gate decides from counted passes, not wall time.
    Arguments as `exact_self_speculative_generate`'s, and `speculative_decode`'s."""
    if proposers is None:
        proposers = hybrid_proposers(model, config, draft)
    elif draft is not None:
        raise ValueError("draft= is for the default proposers; a given proposer holds its own draft")
    if gate is not None and not config.gate:
        raise ValueError("a DraftGate was given but the DraftConfig's gate is False")
    return speculative_decode(model, input_ids, max_new_tokens, eos_token_id, config, sampling, generator,
                              proposers=proposers, gate=gate or gate_of(config), on_tokens=on_tokens)


register_method("essg", hybrid_proposers, samples=False)
register_method("sss", hybrid_proposers)
