"""Self-speculative decoding for LLaMA-family models: draft with the same model
skipping some sub-layers, verify in one full pass, output unchanged."""

# The one setting `import ssd` makes: MKL's code path (`MKL_CBWR`, `ssd.fast.cpu.mkl_code_path`), which on
# AMD CPUs decides how fast the few-row products of decoding run. MKL reads it once, when it first
# runs, so it is set here, before any model can run; a value the user set is kept. Every other
# per-CPU choice is made when a model is built, and shows in its repr (`LlamaForCausalLM.products`).
from ssd.fast.cpu import use_fast_mkl_path

use_fast_mkl_path()

# A method module registers its name (`ssd.methods.registry`).
import ssd.methods.clasp  # noqa: F401
import ssd.methods.paper  # noqa: F401
import ssd.methods.recycling  # noqa: F401
from ssd.core.decoding import GenerationResult, base_generate
from ssd.core.draft import Draft
from ssd.core.modeling_llama import KVCache, LlamaForCausalLM
from ssd.core.proposers import Outcome, Proposal, Proposer, Step
from ssd.core.sampling import Sampling
from ssd.core.self_draft import SelfDraftConfig
from ssd.core.skip_layers import apply_skip_layers, load_draft, save_skip_layers
from ssd.fast.device import DeviceProfile
from ssd.generation import GenerateOutput, generate, method_names
from ssd.inference import infer
from ssd.loading.model import load_model
from ssd.methods.gguf_draft import GGUFDraftConfig
from ssd.methods.hybrid import DraftConfig, hybrid_generate
from ssd.methods.paper import PAPER_CONFIG, exact_self_speculative_generate, paper_draft, self_speculative_sample
from ssd.methods.registry import register_method
from ssd.methods.swift import SwiftConfig, SwiftOptimizer, swift_generate

__all__ = [
    "DeviceProfile",
    "Draft",
    "DraftConfig",
    "GenerateOutput",
    "GGUFDraftConfig",
    "GenerationResult",
    "KVCache",
    "LlamaForCausalLM",
    "Outcome",
    "PAPER_CONFIG",
    "Proposal",
    "Proposer",
    "Step",
    "apply_skip_layers",
    "Sampling",
    "SelfDraftConfig",
    "SwiftConfig",
    "SwiftOptimizer",
    "base_generate",
    "exact_self_speculative_generate",
    "generate",
    "hybrid_generate",
    "infer",
    "load_model",
    "load_draft",
    "method_names",
    "paper_draft",
    "register_method",
    "save_skip_layers",
    "self_speculative_sample",
    "swift_generate",
]
