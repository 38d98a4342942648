"""Draft & Verify as the paper and its reference code run it: `essg` (greedy) and `sss` (sampled).

The self-draft alone (`ssd.core.self_draft.SelfDraft`, not gated): the model's paper-kind skip set at the
model's own precision (`paper_draft`), the adaptive draft-exit threshold, the whole vocabulary, no lookups,
no gate, no llama.cpp draft. Its drafted and accepted counts are the reference code's
`exact_self_speculative_generate`'s (tests/test_reference.py). Each of ssd's additions can be put back on
top, by its own setting (`ngram_size=3`, `gate=True`, `draft_vocab_size=16384`, a low-bit `draft=`): the
evaluation notebooks' ablation rows. The default method, all of them together, is `hybrid`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ssd.core.decoding import EosTokenIds, GenerationResult, OnTokens, speculative_decode
from ssd.core.draft import Draft
from ssd.core.modeling_llama import LlamaForCausalLM
from ssd.core.proposers import Proposer
from ssd.core.sampling import Sampling
from ssd.core.self_draft import SelfDraftConfig
from ssd.core.skip_layers import DEFAULT_PATH, load_draft, read_skip_layers
from ssd.loading.keys import model_key
from ssd.methods.gguf_draft import GGUFDraftConfig
from ssd.methods.hybrid import DraftConfig, default_proposers, gate_of
from ssd.methods.lookup import LookupConfig
from ssd.methods.registry import register_method

# The paper's setting: the self-draft alone, full head, no lookups, no gate, no GGUF draft.
PAPER_CONFIG = DraftConfig(self_draft=SelfDraftConfig(), lookup=LookupConfig(ngram_size=0),
                           gguf=GGUFDraftConfig(gguf_draft=None), gate=False)

# A paper-kind entry of skip_layers.json: a skip set searched at the model's own precision.
PAPER_SUFFIX = "/paper"


def paper_key(model: LlamaForCausalLM, path: str | Path = DEFAULT_PATH) -> str:
    """The model's paper-kind entry: `<key>/paper`, else `<key>` where that names no draft precision (the
    published LLaMA-2 sets). An error, saying how to make one, where there is none."""
    key = model_key(model.name_or_path)
    entries = read_skip_layers(path)
    for name in (key + PAPER_SUFFIX, key):
        if name in entries and entries[name].get("draft_precision") is None:
            return name
    raise KeyError(f"no paper-kind skip set for {key!r} in {path} (an entry {key + PAPER_SUFFIX!r}, searched at "
                   f"full precision): search one (notebooks/search.ipynb with precisions=[None]), or pass draft=")


def paper_draft(model: LlamaForCausalLM, path: str | Path = DEFAULT_PATH) -> Draft:
    """The draft of the model's paper-kind entry (`paper_key`), on the model's own weights."""
    return load_draft(paper_key(model, path), path, model.num_layers).replace(precision=None)


def paper_proposers(model: LlamaForCausalLM, config: DraftConfig, draft: Draft | None = None) -> list[Proposer]:
    """`essg`'s and `sss`'s proposers: `default_proposers` with `paper_draft` where no `draft` is given (under
    `PAPER_CONFIG`, the self-draft alone)."""
    return default_proposers(model, config, paper_draft(model) if draft is None else draft)


def exact_self_speculative_generate(
    model: LlamaForCausalLM,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: EosTokenIds = None,
    config: DraftConfig = PAPER_CONFIG,
    *,
    draft: Draft | None = None,
    on_tokens: OnTokens | None = None,
) -> GenerationResult:
    """Draft & Verify's greedy decoding (the reference code's function of this name): output equals
    `base_generate`'s token for token wherever a verification's logits rank tokens as a one-token step's do
    (docs/numerics.md says where that holds). `draft` None: `paper_draft(model)`."""
    return self_speculative_sample(model, input_ids, max_new_tokens, eos_token_id, config, None, None, draft=draft,
                                   on_tokens=on_tokens)


def self_speculative_sample(
    model: LlamaForCausalLM,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: EosTokenIds = None,
    config: DraftConfig = PAPER_CONFIG,
    sampling: Sampling | None = Sampling(),
    generator: torch.Generator | None = None,
    *,
    draft: Draft | None = None,
    on_tokens: OnTokens | None = None,
) -> GenerationResult:
    """Draft & Verify's self-speculative sampling: output distributed exactly as sampling the full model
    (the draft's tokens are drawn from its `q`, and verified by the rejection rule). Arguments as
    `exact_self_speculative_generate`'s, and `speculative_decode`'s."""
    proposers = paper_proposers(model, config, draft)
    return speculative_decode(model, input_ids, max_new_tokens, eos_token_id, config.self_draft, sampling, generator,
                              proposers=proposers, gate=gate_of(config), on_tokens=on_tokens)


register_method("essg", paper_proposers, samples=False, config=PAPER_CONFIG)
register_method("sss", paper_proposers, config=PAPER_CONFIG)
