"""Self-speculative decoding for LLaMA-family models: draft with the same model
skipping some sub-layers, verify in one full pass, output unchanged."""

from ssd.decoding import (
    DraftConfig,
    GenerationResult,
    base_generate,
    exact_self_speculative_generate,
    self_speculative_sample,
)
from ssd.draft import Draft
from ssd.generation import GenerateOutput, generate, method_names, register_method
from ssd.inference import infer
from ssd.modeling_llama import KVCache, LlamaForCausalLM
from ssd.cpu import use_fast_mkl_path
from ssd.models import load_model
from ssd.proposers import Outcome, Proposal, Proposer, Step
from ssd.sampling import Sampling
from ssd.skip_layers import apply_skip_layers, load_skip_layers, save_skip_layers
from ssd.swift import SwiftConfig, SwiftOptimizer, swift_generate

__all__ = [
    "Draft",
    "DraftConfig",
    "GenerateOutput",
    "GenerationResult",
    "KVCache",
    "LlamaForCausalLM",
    "Outcome",
    "Proposal",
    "Proposer",
    "Step",
    "apply_skip_layers",
    "Sampling",
    "SwiftConfig",
    "SwiftOptimizer",
    "base_generate",
    "exact_self_speculative_generate",
    "generate",
    "infer",
    "load_model",
    "load_skip_layers",
    "method_names",
    "register_method",
    "save_skip_layers",
    "self_speculative_sample",
    "swift_generate",
]

use_fast_mkl_path()  # before any model runs
