"""`infer`: the reference code's interface (one prompt in, a dict of results out), built on `ssd.generate`."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase

from ssd.core.decoding import check_max_new_tokens
from ssd.core.modeling_llama import LlamaForCausalLM
from ssd.generation import generate, method_names, swift_optimizer
from ssd.methods.swift import SwiftConfig, SwiftOptimizer


def infer(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    prompt_or_input_ids,
    generate_fn: str = "base",
    max_new_tokens: int = 128,
    early_stop: bool = False,
    seed: int | None = 42,
    do_sample: bool | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    swift: SwiftConfig | SwiftOptimizer | None = None,
    task: str | None = None,
    cache_hit: bool = False,
    skip_layers_path: str | Path | None = None,
    **draft_kwargs,
) -> dict:
    """Generate from a prompt with `base` (autoregressive), `essg` and `sss` (Draft & Verify's exact greedy
    and sampled self-speculative decoding, as the reference code's functions of these names), `hybrid`
    (ssd's default method; greedy, or sampled with `do_sample=True`) or `swift` (skip set optimised on the
    fly, `ssd.methods.swift`; likewise), or another registered method.

    `draft_kwargs` are `DraftConfig` settings by name (`DraftConfig.option_names()`: max_step_draft,
    th_stop_draft, ..., gate, ngram_size, ..., branches). `do_sample` defaults to True for `sss` and False
    otherwise (base samples when asked). `seed=None` leaves the random state
    alone, so repeated sampled calls differ. `early_stop` stops at the
    tokenizer's EOS.

    SWIFT: `swift` is a `SwiftConfig` (None: the paper's defaults) for a fresh
    optimiser, or a `SwiftOptimizer` that carries its state over a stream of
    prompts. `task` names the cached set in `skip_layers_path` (None: the
    repository's skip_layers.json), which `cache_hit=True` reuses; `draft_kwargs`
    override the config's draft. The result gains `"swift"`: optimiser statistics for this call.
    """
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("infer decodes the completion with a tokenizer: pass one, or load the model with ssd.load_model")
    check_max_new_tokens(max_new_tokens)
    if generate_fn not in method_names():
        raise ValueError(f"generate_fn must be one of {method_names()}, got {generate_fn!r}")
    if generate_fn == "swift":
        swift = swift_optimizer(model, swift, task, cache_hit, skip_layers_path, draft_kwargs)
        draft_kwargs = {}
    elif swift is not None or task is not None or cache_hit or skip_layers_path is not None:
        raise ValueError(f"swift, task, cache_hit and skip_layers_path are for generate_fn='swift', not {generate_fn!r}")
    if do_sample is None:
        do_sample = generate_fn == "sss"
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p) if do_sample else {}
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=do_sample, eos_token_id=tokenizer.eos_token_id if early_stop else [],
        return_dict_in_generate=True, **sampling,
    )
    generator = torch.Generator(device=model.device).manual_seed(seed) if seed is not None else None
    out = generate(model, prompt_or_input_ids, config, method=generate_fn, tokenizer=tokenizer, generator=generator,
                   swift=swift, **draft_kwargs)
    result = {
        "generate_ids": out.tokens,
        "completion": tokenizer.decode(out.tokens, skip_special_tokens=True),
        "time": out.time,
        "matchness": out.matchness,
        "num_drafted_tokens": out.num_drafted_tokens,
        "num_looked_up_tokens": out.num_looked_up_tokens,
        "drafted_by_kind": dict(out.drafted_by_kind),
        "accepted_by_kind": dict(out.accepted_by_kind),
        "num_verifications": out.num_verifications,
        "th_stop_draft": out.th_stop_draft,
    }
    if out.swift is not None:
        result["swift"] = out.swift
    return result
