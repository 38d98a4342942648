"""Which of ssd's network classes runs a checkpoint, from its config; what none of them can run is refused."""

from __future__ import annotations

from transformers import PretrainedConfig

from ssd.core.modeling_llama import LlamaForCausalLM, Qwen2ForCausalLM

MODEL_CLASSES: dict[str, type[LlamaForCausalLM]] = {"llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM}


def model_class(config: PretrainedConfig) -> type[LlamaForCausalLM]:
    """`ssd`'s class for a checkpoint's config. An architecture, or an option, that the model cannot
    honour is an error: sliding-window attention (Qwen2.5's configs name a window even with it off,
    so only `use_sliding_window` or sliding `layer_types` count)."""
    if config.model_type not in MODEL_CLASSES:
        raise ValueError(
            f"a {config.model_type!r} checkpoint: ssd drafts with LLaMA-family models, model_type "
            f"{' or '.join(map(repr, MODEL_CLASSES))} (LLaMA-2, CodeLlama, Llama-3, SmolLM, Qwen2, Qwen2.5...)"
        )
    sliding = sorted({kind for kind in getattr(config, "layer_types", None) or () if kind != "full_attention"})
    if getattr(config, "use_sliding_window", False) or sliding:
        raise ValueError(
            f"this {config.model_type!r} checkpoint uses sliding-window attention "
            f"(use_sliding_window={getattr(config, 'use_sliding_window', False)}, layer types {sliding}); "
            f"ssd's attention is full attention only"
        )
    return MODEL_CLASSES[config.model_type]
