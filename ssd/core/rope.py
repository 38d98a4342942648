"""Rotary position embeddings: the checkpoint's frequencies, as cos and sin tables for every position."""

from __future__ import annotations

import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS


def rope_inverse_frequencies(config: LlamaConfig) -> tuple[torch.Tensor, float]:
    """The checkpoint's RoPE: inverse frequencies and the cos/sin scaling factor."""
    rope = config.rope_parameters
    rope_type = rope.get("rope_type", "default")
    if rope_type == "default":
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        exponents = torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim
        return 1.0 / (rope["rope_theta"] ** exponents), 1.0
    if rope_type in ("dynamic", "longrope"):
        # Their frequencies change with the sequence length; a static table cannot hold them.
        raise NotImplementedError(f"RoPE type {rope_type!r} is not supported; supported: default, linear, llama3, yarn")
    return ROPE_INIT_FUNCTIONS[rope_type](config, None)


def rope_tables(config: LlamaConfig, max_context: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for positions 0..max_context-1, Hugging Face's formula (position * inv_freq in float32)."""
    inv_freq, scaling = rope_inverse_frequencies(config)
    freqs = torch.outer(torch.arange(max_context, dtype=torch.float), inv_freq)
    angles = torch.cat((freqs, freqs), dim=-1)
    return (angles.cos() * scaling).to(device), (angles.sin() * scaling).to(device)
