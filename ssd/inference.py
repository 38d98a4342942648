"""`infer`: one generation from a prompt, timed, with the reference code's result names."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from ssd.decoding import (
    DraftConfig,
    GenerationResult,
    base_generate,
    exact_self_speculative_generate,
    self_speculative_sample,
)
from ssd.modeling_llama import LlamaForCausalLM
from ssd.sampling import Sampling
from ssd.skip_layers import DEFAULT_PATH
from ssd.swift import SwiftConfig, SwiftOptimizer, swift_generate

GENERATE_FNS = ("base", "essg", "sss", "swift")


def encode_prompt(model: LlamaForCausalLM, tokenizer, prompt_or_input_ids, max_new_tokens: int) -> torch.Tensor:
    """Token ids `[1, T]` on the model's device; rejects what could not be generated whole."""
    if isinstance(prompt_or_input_ids, str):
        input_ids = tokenizer(prompt_or_input_ids, return_tensors="pt").input_ids
    else:
        input_ids = torch.as_tensor(prompt_or_input_ids, dtype=torch.long)
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"expected one prompt, got input_ids of shape {tuple(input_ids.shape)}")
    if input_ids.shape[1] == 0 or (isinstance(prompt_or_input_ids, str) and not prompt_or_input_ids):
        raise ValueError("the prompt is empty")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    total = input_ids.shape[1] + max_new_tokens
    if total > model.max_context:
        raise ValueError(
            f"prompt ({input_ids.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) = {total} "
            f"exceeds the model's context of {model.max_context} tokens"
        )
    return input_ids.to(model.device)


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
    """Generate from a prompt with `base` (autoregressive), `essg` (exact greedy
    self-speculative), `sss` (self-speculative sampling) or `swift` (skip set
    optimised on the fly, `ssd.swift`; greedy, or sampled with `do_sample=True`).

    `draft_kwargs` are `DraftConfig`'s: max_step_draft, th_stop_draft,
    auto_th_stop_draft, auto_parameters, draft_vocab_size, gate, ngram_size,
    ngram_min, short_lookup. `do_sample` defaults to True for `sss` and False
    otherwise (base samples when asked). `seed=None` leaves the random state
    alone, so repeated sampled calls differ. `early_stop` stops at EOS.

    SWIFT: `swift` is a `SwiftConfig` (None: the paper's defaults) for a fresh
    optimiser, or a `SwiftOptimizer` that carries its state over a stream of
    prompts. `task` names the cached set in `skip_layers_path` (None: the
    repository's skip_layers.json), which `cache_hit=True` reuses; `draft_kwargs`
    override the config's draft. The result gains `"swift"`: optimiser statistics for this call.
    """
    if generate_fn not in GENERATE_FNS:
        raise ValueError(f"generate_fn must be one of {GENERATE_FNS}, got {generate_fn!r}")
    optimizer = None
    if generate_fn == "swift":
        optimizer = _swift_optimizer(model, swift, task, cache_hit, skip_layers_path, draft_kwargs)
    elif swift is not None or task is not None or cache_hit or skip_layers_path is not None:
        raise ValueError(f"swift, task, cache_hit and skip_layers_path are for generate_fn='swift', not {generate_fn!r}")
    if generate_fn == "essg" and do_sample:
        raise ValueError("essg is greedy; use generate_fn='sss' to sample")
    if generate_fn == "base" and draft_kwargs:
        raise ValueError(f"base does not draft; unexpected arguments {sorted(draft_kwargs)}")
    input_ids = encode_prompt(model, tokenizer, prompt_or_input_ids, max_new_tokens)
    if do_sample is None:
        do_sample = generate_fn == "sss"
    sampling = Sampling(temperature, top_k, top_p) if do_sample else None
    generator = None
    if seed is not None:
        generator = torch.Generator(device=model.device).manual_seed(seed)
    eos_token_id = tokenizer.eos_token_id if early_stop else None

    _synchronize(model.device)
    start = time.perf_counter()
    if generate_fn == "base":
        result = base_generate(model, input_ids, max_new_tokens, eos_token_id, sampling, generator)
    elif generate_fn == "swift":
        since = len(optimizer.history)
        result = swift_generate(model, input_ids, max_new_tokens, eos_token_id, optimizer, sampling, generator)
    elif generate_fn == "essg":
        result = exact_self_speculative_generate(model, input_ids, max_new_tokens, eos_token_id, DraftConfig(**draft_kwargs))
    else:
        result = self_speculative_sample(
            model, input_ids, max_new_tokens, eos_token_id, DraftConfig(**draft_kwargs), sampling, generator
        )
    _synchronize(model.device)
    elapsed = time.perf_counter() - start
    out = _as_dict(result, tokenizer, elapsed)
    if optimizer is not None:
        out["swift"] = optimizer.stats(since)
    return out


def _swift_optimizer(model, swift, task, cache_hit, skip_layers_path, draft_kwargs) -> SwiftOptimizer:
    """The optimiser for one swift call: the caller's, or a fresh one from a config."""
    if isinstance(swift, SwiftOptimizer):
        given = [name for name, value in (("task", task), ("cache_hit", cache_hit), ("skip_layers_path", skip_layers_path))
                 if value] + sorted(draft_kwargs)
        if given:
            raise ValueError(f"{given} are fixed by the SwiftOptimizer passed as swift; set them when creating it")
        return swift
    config = SwiftConfig() if swift is None else swift
    if not isinstance(config, SwiftConfig):
        raise ValueError(f"swift must be a SwiftConfig, a SwiftOptimizer or None, got {type(swift).__name__}")
    if draft_kwargs:
        config = dataclasses.replace(config, draft=dataclasses.replace(config.draft, **draft_kwargs))
    path = DEFAULT_PATH if skip_layers_path is None else skip_layers_path
    return SwiftOptimizer(model, config, task, cache_hit, path)


def _as_dict(result: GenerationResult, tokenizer, elapsed: float) -> dict:
    return {
        "generate_ids": result.tokens,
        "completion": tokenizer.decode(result.tokens, skip_special_tokens=True),
        "time": elapsed,
        "matchness": result.matchness,
        "num_drafted_tokens": result.num_drafted_tokens,
        "num_looked_up_tokens": result.num_looked_up_tokens,
        "num_verifications": result.num_verifications,
        "th_stop_draft": result.th_stop_draft,
    }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
