"""Self-speculative decoding for LLaMA-family models: draft with the same model
skipping some sub-layers, verify in one full pass, output unchanged."""

from ssd.decoding import (
    DraftConfig,
    GenerationResult,
    base_generate,
    exact_self_speculative_generate,
    self_speculative_sample,
)
from ssd.inference import infer
from ssd.modeling_llama import KVCache, LlamaForCausalLM
from ssd.models import load_model
from ssd.sampling import Sampling

__all__ = [
    "DraftConfig",
    "GenerationResult",
    "KVCache",
    "LlamaForCausalLM",
    "Sampling",
    "base_generate",
    "exact_self_speculative_generate",
    "infer",
    "load_model",
    "self_speculative_sample",
]
