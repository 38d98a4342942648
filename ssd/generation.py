"""`ssd.generate`: self-speculative decoding behind the interface of transformers' `generate`.

A prompt string, token ids or a chat in; a `[1, prompt + new]` tensor of ids
out (or, with `return_dict_in_generate=True`, a `GenerateOutput` with the
decoding statistics). Settings come from a `GenerationConfig`, the model's
own by default, overridden by keyword arguments, as in `model.generate`;
what `ssd` cannot honour is refused, never ignored.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase

from ssd.core.clock import timed
from ssd.core.decoding import (
    GenerationResult,
    base_generate,
    check_input_ids,
    check_max_new_tokens,
    eos_set,
    speculative_decode,
)
from ssd.core.draft import Draft
from ssd.core.modeling_llama import LlamaForCausalLM
from ssd.core.sampling import Sampling
from ssd.core.skip_layers import DEFAULT_PATH
from ssd.methods.hybrid import DraftConfig, gate_of
from ssd.methods.registry import DRAFTING_METHODS
from ssd.methods.swift import SwiftConfig, SwiftOptimizer, swift_generate


def method_names() -> tuple[str, ...]:
    """Every method `generate` takes."""
    return ("base", *DRAFTING_METHODS, "swift")


DRAFT_OPTIONS = DraftConfig.option_names()
# GenerationConfig fields that `generate` reads, or that change nothing in a one-sequence decode.
HONOURED = {"max_new_tokens", "max_length", "do_sample", "temperature", "top_k", "top_p", "eos_token_id",
            "return_dict_in_generate", "pad_token_id", "bos_token_id", "decoder_start_token_id", "use_cache",
            "cache_implementation", "cache_config", "max_cache_len", "compile_config", "disable_compile",
            "_from_model_config", "transformers_version"}


@dataclasses.dataclass(kw_only=True)
class GenerateOutput(GenerationResult):
    """`generate`'s result with `return_dict_in_generate=True`: transformers' `.sequences`, plus how decoding went.

    `tokens` are the new tokens (`sequences[0, prompt:]` as a list), `time`
    the wall seconds of the decode (device synchronised), `swift` the SWIFT
    optimiser's statistics for this input (None for other methods).
    """

    sequences: torch.Tensor
    time: float
    swift: dict | None = None


def resolve_generation_config(model: LlamaForCausalLM, generation_config: GenerationConfig | None,
                              kwargs: dict) -> tuple[GenerationConfig, dict]:
    """The settings to decode with, merged as transformers' `generate` merges them: the given config
    (None: an empty one), its unset fields from the model's `generation_config`, then from transformers'
    global defaults (so `top_k` is 50 unless set), then `kwargs`. Also returns the `kwargs` it did not take."""
    if generation_config is not None and not isinstance(generation_config, GenerationConfig):
        raise ValueError(f"generation_config must be a transformers.GenerationConfig, got {type(generation_config).__name__}")
    config = copy.deepcopy(generation_config) if generation_config is not None else GenerationConfig()
    own = getattr(model, "generation_config", None) or GenerationConfig.from_model_config(model.config)
    config.update(**own.to_dict(), defaults_only=True)
    config.update(**GenerationConfig._get_default_generation_params(), defaults_only=True)
    unused = config.update(**{k: v for k, v in kwargs.items() if k not in DRAFT_OPTIONS})
    return config, {**unused, **{k: v for k, v in kwargs.items() if k in DRAFT_OPTIONS}}


def refuse_unsupported(config: GenerationConfig) -> None:
    """A clear error for every setting `ssd` would otherwise ignore (beams, penalties, stop strings...)."""
    default = GenerationConfig()
    default.update(**GenerationConfig._get_default_generation_params(), defaults_only=True)
    default = default.to_dict()
    unset = (None, False)
    different = {k: v for k, v in config.to_dict().items()
                 if k not in HONOURED and v != default.get(k) and not (v in unset and default.get(k) in unset)}
    if different:
        raise ValueError(f"ssd.generate does not support {different}: it decodes one sequence, greedily or by "
                         f"sampling with temperature, top_k and top_p, and stops at eos_token_id or max_new_tokens")
    if config.use_cache is False:
        raise ValueError("use_cache=False is not supported: self-speculative decoding needs the KV cache")


def encode_inputs(inputs, tokenizer: PreTrainedTokenizerBase | None, device: torch.device) -> torch.Tensor:
    """`[1, T]` ids from a prompt string, ids (1-D or `[1, T]`), or a chat (a list of role/content messages)."""
    if isinstance(inputs, (str, list)) and not (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
        if tokenizer is None:
            raise ValueError("a string or chat input needs a tokenizer: pass tokenizer=, or load the model with "
                             "ssd.load_model, which keeps its tokenizer on the model")
        if isinstance(inputs, str):
            if not inputs:
                raise ValueError("the prompt is empty")
            return tokenizer(inputs, return_tensors="pt").input_ids.to(device)
        if not inputs or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in inputs):
            raise ValueError('a chat must be a non-empty list of {"role": ..., "content": ...} messages')
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("this tokenizer has no chat template: pass the prompt as a string instead")
        encoded = tokenizer.apply_chat_template(inputs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        return encoded["input_ids"].to(device)
    try:
        ids = torch.as_tensor(inputs)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"inputs must be a prompt string, a chat (a list of role/content messages) or token ids, "
                         f"got {type(inputs).__name__}") from None
    if ids.dim() == 1:
        ids = ids[None]
    if ids.is_floating_point() or ids.is_complex():
        raise ValueError(f"token ids must be integers, got {ids.dtype}")
    return ids.to(device=device, dtype=torch.long)


def generate(
    model: LlamaForCausalLM,
    inputs,
    generation_config: GenerationConfig | None = None,
    *,
    method: str | None = None,
    streamer=None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    generator: torch.Generator | None = None,
    swift: SwiftConfig | SwiftOptimizer | None = None,
    draft: Draft | None = None,
    **kwargs,
) -> torch.Tensor | GenerateOutput:
    """Decode one prompt as `model.generate` would, with self-speculative decoding.

    `inputs`: a prompt string, token ids, or a chat (`[{"role": "user",
    "content": ...}]`, through the tokenizer's chat template with the
    generation prompt added). `generation_config`: None is the model's own;
    keyword arguments override it (`max_new_tokens`, `do_sample`,
    `temperature`, `top_k`, `top_p`, `eos_token_id`, `return_dict_in_generate`).
    Decoding stops after any id in `eos_token_id` among the new tokens.
    Other keyword arguments are `DraftConfig` settings (`max_step_draft`,
    `ngram_size`, `gate`, ...).

    `method`: "hybrid" (the default: ssd's self-draft, lookups and llama.cpp's GGUF draft under
    a gate, `ssd.methods.hybrid`), "essg" and "sss" (Draft & Verify's greedy and sampled algorithms
    as the paper runs them, `ssd.methods.paper`; settings such as `ngram_size` or `gate` add
    ssd's parts back one at a time), "base" (autoregressive), "swift" (skip set optimised while
    decoding; `swift` is its `SwiftConfig` or a `SwiftOptimizer` kept over a stream of prompts),
    or one added by `register_method`. Each starts from its own settings (`essg`: `PAPER_CONFIG`).
    `draft`: the `Draft` the self-draft runs (None: `hybrid`'s is the model's `default_draft`,
    `essg`'s the model's paper-kind entry, `ssd.methods.paper.paper_draft`).
    `streamer` (`TextStreamer`, `TextIteratorStreamer`) gets the prompt, then
    each run of committed tokens as soon as it is verified. `generator`:
    the random stream when sampling (None: torch's global one, as transformers).

    Returns `[1, prompt + new]` token ids, or a `GenerateOutput` with
    `return_dict_in_generate=True`. Greedy methods give `base`'s tokens
    (docs/numerics.md: where that holds bit for bit and where only up to near-ties).
    """
    if "max_new_tokens" in kwargs and kwargs["max_new_tokens"] is not None:
        check_max_new_tokens(kwargs["max_new_tokens"])  # before transformers' own check, which names no caller
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")
    config, extra = resolve_generation_config(model, generation_config, kwargs)
    refuse_unsupported(config)
    draft_options = {k: v for k, v in extra.items() if k in DRAFT_OPTIONS}
    if unknown := sorted(set(extra) - set(draft_options)):
        raise ValueError(f"ssd.generate does not take {unknown} (logits processors, stopping criteria, assistant "
                         f"models and other arguments of model.generate are not supported)")
    sampling = None
    if config.do_sample:  # None means off for a filter, as in transformers
        sampling = Sampling(1.0 if config.temperature is None else config.temperature, config.top_k or 0,
                            1.0 if config.top_p is None else config.top_p)
    method = method or "hybrid"
    if method not in method_names():
        raise ValueError(f"method must be one of {method_names()}, got {method!r}")
    if method in DRAFTING_METHODS and sampling and not DRAFTING_METHODS[method].samples:
        raise ValueError(f"{method} is greedy; sample with method='sss' (or 'hybrid', 'base', 'swift')")
    if method == "base" and draft_options:
        raise ValueError(f"base does not draft; unexpected arguments {sorted(draft_options)}")
    if swift is not None and method != "swift":
        raise ValueError(f"swift= is for method='swift', not {method!r}")
    if draft is not None and method not in DRAFTING_METHODS:
        raise ValueError(f"draft= is for a drafting method ({', '.join(DRAFTING_METHODS)}), not {method!r}")
    if draft is not None and not isinstance(draft, Draft):
        raise ValueError(f"draft must be an ssd.Draft, got {type(draft).__name__}")

    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    input_ids = encode_inputs(inputs, tokenizer, model.device)
    max_new_tokens = config.max_new_tokens
    if max_new_tokens is None:
        max_new_tokens = config.max_length - input_ids.shape[1]
        if max_new_tokens < 1:
            raise ValueError(f"max_length ({config.max_length}) leaves no room after a {input_ids.shape[1]}-token "
                             f"prompt; set max_new_tokens")
    check_input_ids(model, input_ids, max_new_tokens)
    eos = sorted(eos_set(config.eos_token_id, model.config.vocab_size))
    optimizer = swift_optimizer(model, swift, draft_options=draft_options) if method == "swift" else None
    since = len(optimizer.history) if optimizer is not None else 0

    on_tokens = None
    if streamer is not None:
        streamer.put(input_ids.cpu())

        def on_tokens(new: list[int]) -> None:
            streamer.put(torch.tensor(new))

    def decode():
        if method == "base":
            return base_generate(model, input_ids, max_new_tokens, eos, sampling, generator, on_tokens)
        if method == "swift":
            return swift_generate(model, input_ids, max_new_tokens, eos, optimizer, sampling, generator, on_tokens)
        registered = DRAFTING_METHODS[method]
        draft_config = (registered.config or DraftConfig()).replace(**draft_options)
        proposers = registered.proposers(model, draft_config, draft)
        return speculative_decode(model, input_ids, max_new_tokens, eos, draft_config.self_draft, sampling, generator,
                                  proposers=proposers, gate=gate_of(draft_config), on_tokens=on_tokens)

    result, elapsed = timed(decode, model.device)
    if streamer is not None:
        streamer.end()

    sequences = torch.cat([input_ids, torch.tensor([result.tokens], dtype=torch.long, device=input_ids.device)], dim=1)
    if not config.return_dict_in_generate:
        return sequences
    return GenerateOutput(
        **{f.name: getattr(result, f.name) for f in dataclasses.fields(GenerationResult)},
        sequences=sequences, time=elapsed, swift=optimizer.stats(since) if optimizer is not None else None,
    )


def swift_optimizer(model: LlamaForCausalLM, swift: SwiftConfig | SwiftOptimizer | None = None, task: str | None = None,
                    cache_hit: bool = False, skip_layers_path: str | Path | None = None,
                    draft_options: dict | None = None) -> SwiftOptimizer:
    """The optimiser for a SWIFT call: the caller's, or a fresh one from a config (None: the paper's),
    its draft updated by `draft_options`, its cached set named by `task` in `skip_layers_path`."""
    draft_options = draft_options or {}
    if isinstance(swift, SwiftOptimizer):
        given = [name for name, value in (("task", task), ("cache_hit", cache_hit), ("skip_layers_path", skip_layers_path))
                 if value] + sorted(draft_options)
        if given:
            raise ValueError(f"{given} are fixed by the SwiftOptimizer passed as swift; set them when creating it")
        return swift
    config = SwiftConfig() if swift is None else swift
    if not isinstance(config, SwiftConfig):
        raise ValueError(f"swift must be a SwiftConfig, a SwiftOptimizer or None, got {type(swift).__name__}")
    if draft_options:
        config = dataclasses.replace(config, draft=config.draft.replace(**draft_options))
    path = DEFAULT_PATH if skip_layers_path is None else skip_layers_path
    return SwiftOptimizer(model, config, task, cache_hit, path)

