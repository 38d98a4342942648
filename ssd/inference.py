"""`infer`: one generation from a prompt, timed, with the reference code's result names."""

from __future__ import annotations

import time

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

GENERATE_FNS = ("base", "essg", "sss")


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
    **draft_kwargs,
) -> dict:
    """Generate from a prompt with `base` (autoregressive), `essg` (exact greedy
    self-speculative) or `sss` (self-speculative sampling).

    `draft_kwargs` are `DraftConfig`'s: max_step_draft, th_stop_draft,
    auto_th_stop_draft, auto_parameters, draft_vocab_size, gate, ngram_size, ngram_min. `do_sample` defaults to True for
    `sss` and False otherwise (base samples when asked). `seed=None` leaves the random state
    alone, so repeated sampled calls differ. `early_stop` stops at EOS.
    """
    if generate_fn not in GENERATE_FNS:
        raise ValueError(f"generate_fn must be one of {GENERATE_FNS}, got {generate_fn!r}")
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
    elif generate_fn == "essg":
        result = exact_self_speculative_generate(model, input_ids, max_new_tokens, eos_token_id, DraftConfig(**draft_kwargs))
    else:
        result = self_speculative_sample(
            model, input_ids, max_new_tokens, eos_token_id, DraftConfig(**draft_kwargs), sampling, generator
        )
    _synchronize(model.device)
    elapsed = time.perf_counter() - start
    return _as_dict(result, tokenizer, elapsed)


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
