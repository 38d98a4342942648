"""A draft by llama.cpp on the model's own GGUF: the same weights, quantised, on kernels made for them.

On a CPU what limits speed is what a drafted token costs, and llama.cpp runs the quantised model (the
embedded SmolLM2's shipped Q4_1, Qwen2.5-Coder's Q4_K_M) at a fraction of a full PyTorch step, while its
greedy tokens agree with the full model's about as often as ssd's int4 self-draft's do. So it drafts
chains, exiting by Draft & Verify's adaptive threshold on its own probabilities, and the full model in
PyTorch verifies them: output stays exactly the full model's (greedy: `base_generate`'s; sampled: its
distribution, through llama.cpp's probabilities as `q`).

llama.cpp keeps its own KV cache over the same sequence. Before each draft it is brought into step with
the committed tokens: what verification rejected is removed from it, and the tokens it has not seen (the
correction, or an accepted draft's last token) are fed in one batch. Nothing is recomputed from the start.
Needs `llama-cpp-python` (the `llama` extra); the default decoder offers it only on a CPU.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ssd.core.modeling_llama import LlamaForCausalLM
from ssd.core.proposers import Outcome, Proposal, Step, StepKind
from ssd.core.sampling import logits_to_probs, sample
from ssd.core.self_draft import AdaptiveThreshold, SelfDraftConfig
from ssd.fast import cpu
from ssd.loading.checkpoints import named_gguf
from ssd.loading.keys import model_key

INSTALL = 'pip install -e ".[llama]" (llama-cpp-python, built from source: about 5 minutes on 2 cores, once)'
# Token ids whose strings are compared between the GGUF and the model's tokenizer (with the last id).
VOCABULARY_PROBES = 64


def llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def own_gguf(model: LlamaForCausalLM) -> Path | None:
    """The GGUF the model was converted from, where ssd knows one (the embedded SmolLM2, Qwen2.5-Coder) and it is
    there; else None. Found once per model and kept on it: Qwen's is verified (sha256 of 1 GB) when found."""
    if "_own_gguf" not in model.__dict__:
        try:
            model.__dict__["_own_gguf"] = named_gguf(model_key(model.name_or_path))
        except (ValueError, FileNotFoundError):  # no GGUF known for this model, or its package is gone
            model.__dict__["_own_gguf"] = None
    return model.__dict__["_own_gguf"]


@dataclass
class GGUFDraftTime:
    """Where a GGUF draft's proposing time went: bringing llama.cpp's cache into step (`following`: dropping
    rejected positions, feeding the tokens it lacks, which also gives the first draft's logits) and
    drafting the rest of the chain (`drafting`), in seconds, over `steps` steps that drafted `tokens`."""

    following: float = 0.0
    drafting: float = 0.0
    steps: int = 0
    tokens: int = 0

    def add(self, following: float, drafting: float, tokens: int) -> None:
        self.following += following
        self.drafting += drafting
        self.steps += 1
        self.tokens += tokens


@dataclass(frozen=True)
class GGUFDraftConfig:
    """llama.cpp's draft on a GGUF of the model. `gguf_draft`: "auto", the model's own GGUF where ssd knows it
    (the embedded SmolLM2, Qwen2.5-Coder) and llama.cpp is installed, on a CPU (the default decoder offers it
    to the gate, which runs it where it pays); a path, that file; None, no such draft. `gguf_th_stop_draft`:
    the exit threshold it starts from; its length and the threshold's update are the self-draft's
    (`SelfDraftConfig`). Its start is lower than the self-draft's: llama.cpp's tokens are the same weights'
    (quantised), accepted about 0.97 of the time on the bench's chat prompts, so its chains pay when long.
    `gguf_prompt_window`: llama.cpp reads the prompt's last this many tokens (None: all); measured on 12 prompts
    of 44-993 tokens, 128 new tokens: 64, 128, 256, all gave 1.66x, 1.73x, 1.62x, 1.35x `base`."""

    gguf_draft: str | Path | None = "auto"
    gguf_th_stop_draft: float = 0.2
    gguf_prompt_window: int | None = 128

    def __post_init__(self):
        if not 0 <= self.gguf_th_stop_draft <= 1:
            raise ValueError(f"gguf_th_stop_draft must be in [0, 1], got {self.gguf_th_stop_draft}")
        if self.gguf_prompt_window is not None and self.gguf_prompt_window < 1:
            raise ValueError(f"gguf_prompt_window must be >= 1 or None, got {self.gguf_prompt_window}")
        if self.gguf_draft is not None and not isinstance(self.gguf_draft, (str, Path)):
            raise ValueError(f'gguf_draft must be "auto", a GGUF file\'s path or None, got {self.gguf_draft!r}')


class GGUFDraft:
    """llama.cpp's greedy or sampled chain on the model's GGUF, as a proposer: offers the kind "gguf".

    A step drafts up to `max_step_draft` tokens, stopping after the first whose top probability (llama.cpp's)
    is under the exit threshold, which `adaptive` updates after each of its verifications (None: fixed),
    as the self-draft's does. `passes_per_token`: a drafted token's cost in full-model passes, charged to
    the gate when sampling (the GGUF's bytes over the model's weight bytes: deterministic, unlike time).
    `prompt_window`: llama.cpp reads only the prompt's last this many tokens (None: all of it), then every
    committed token: it processes a prompt at about a quarter of a token's decode time each (Q4_1, 2 cores),
    which a long prompt would not earn back in 128 new tokens.
    """

    kind: StepKind = "gguf"

    def __init__(self, llm, max_step_draft: int, th_stop_draft: float, adaptive: AdaptiveThreshold | None,
                 passes_per_token: float, prompt_window: int | None = None):
        self.llm, self.max_step_draft, self.th_stop_draft = llm, max_step_draft, th_stop_draft
        self.adaptive, self.passes_per_token, self.prompt_window = adaptive, passes_per_token, prompt_window
        self.start = None  # llama.cpp's position 0 is the sequence's position `start` (set at the first offer)
        self.synced = 0  # llama.cpp's positions below this hold committed tokens (they stay so)
        self.spent = GGUFDraftTime()

    @classmethod
    def of(cls, model: LlamaForCausalLM, config: SelfDraftConfig, gguf: str | Path,
           th_stop_draft: float | None = None, prompt_window: int | None = None) -> GGUFDraft:
        """A draft of `config`'s length and threshold update, from `th_stop_draft` (None: `config`'s), reading
        the last `prompt_window` tokens of the prompt (None: all), on `gguf`'s llama.cpp model, loaded once
        per model and file (`llama_model`)."""
        llm = llama_model(model, Path(gguf))
        return cls(llm, config.max_step_draft, config.th_stop_draft if th_stop_draft is None else th_stop_draft,
                   AdaptiveThreshold.of(config), Path(gguf).stat().st_size / weight_bytes(model), prompt_window)

    def offer(self, step: Step) -> list[StepKind]:
        if self.start is None:  # llama.cpp's prefill, once a generation, as the model's own is: no step's cost
            window = step.prompt_length if self.prompt_window is None else self.prompt_window
            self.start = max(0, step.prompt_length - window)
            self.follow(step.sequence[self.start : step.prompt_length])
        if step.room < 1 or len(step.sequence) - self.start + min(self.max_step_draft, step.room) > self.llm.n_ctx():
            return []
        return [self.kind]

    def propose(self, kind: StepKind, step: Step) -> Proposal:
        start = time.perf_counter()
        logits = self.follow(step.sequence[self.start :])
        following = time.perf_counter()
        tokens, probs = [], []
        length = min(self.max_step_draft, step.room)
        for i in range(length):
            if step.greedy:
                token = int(logits.argmax())
                confidence = 1.0 / float(np.exp(logits - logits[token]).sum())
            else:
                q = logits_to_probs(torch.from_numpy(logits).to(step.model.device), step.sampling)
                token, confidence = int(sample(q, step.generator)), float(q.max())
                probs.append(q)
            tokens.append(token)
            if confidence < self.th_stop_draft or i == length - 1:
                break
            logits = self.feed([token])
        self.spent.add(following - start, time.perf_counter() - following, len(tokens))
        return Proposal(tokens, torch.stack(probs) if probs else None, passes=len(tokens) * self.passes_per_token)

    def observe(self, outcome: Outcome, step: Step) -> None:
        if outcome.kind == self.kind and self.adaptive is not None:
            self.th_stop_draft = self.adaptive.update(self.th_stop_draft, outcome.accepted,
                                                      len(outcome.proposal.tokens), self.max_step_draft)

    def follow(self, sequence: list[int]) -> np.ndarray:
        """Bring llama.cpp's cache into step with `sequence` (the prompt's window and the committed tokens):
        keep the longest prefix it already holds (all but the last token, whose logits are wanted), drop
        the rest (rejected drafts), feed what it lacks. Returns the logits after `sequence`'s last token."""
        held = self.llm.input_ids
        keep = min(self.synced, self.llm.n_tokens)
        end = min(self.llm.n_tokens, len(sequence) - 1)
        while keep < end and held[keep] == sequence[keep]:
            keep += 1
        self.llm.n_tokens = keep
        logits = self.feed(sequence[keep:])
        self.synced = len(sequence)
        return logits

    def feed(self, tokens: list[int]) -> np.ndarray:
        """Append `tokens` to llama.cpp's sequence (its cache beyond the held tokens is dropped first);
        returns the logits after the last of them (a copy: the next pass overwrites llama.cpp's)."""
        self.llm.eval(tokens)
        row = self.llm._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(row, shape=(self.llm.n_vocab(),)).copy()


def llama_model(model: LlamaForCausalLM, gguf: Path):
    """`gguf` in llama.cpp, on torch's thread count, checked against `model`; loaded once per model and file
    (kept on the model: a generation's proposers are new, its llama.cpp model is not)."""
    loaded = model.__dict__.setdefault("_llama_cpp_drafts", {})
    if gguf not in loaded:
        if not llama_cpp_installed():
            raise ValueError(f"the GGUF draft needs llama.cpp: {INSTALL}")
        if model.device.type != "cpu":
            raise ValueError(f"the GGUF draft runs on a CPU beside a model on the CPU; this model is on {model.device}")
        if not gguf.is_file():
            raise FileNotFoundError(f"no GGUF file at {gguf}")
        llm = open_gguf(gguf, min(model.max_context, 8192))
        check_gguf(model, llm, gguf)
        loaded[gguf] = llm
    return loaded[gguf]


def open_gguf(gguf: Path, context: int):
    """llama.cpp's model of `gguf`, for `context` positions, on torch's thread count.

    On a CPU with AMX, llama.cpp 0.3.36's AMX matrix product (which it picks for Q4_1 weights) crashes the
    process at the first pass (measured on a Xeon with AMX-INT8): there its weights stay in plain buffers
    (`use_extra_bufts` off), run by its AVX512 kernels."""
    from llama_cpp import Llama, llama_cpp

    threads = torch.get_num_threads()
    default_params = llama_cpp.llama_model_default_params

    def plain_buffers():
        params = default_params()
        params.use_extra_bufts = False
        return params

    if cpu.AMX:  # Llama() reads its model parameters from this function, and takes no argument for the field
        llama_cpp.llama_model_default_params = plain_buffers
    try:
        return Llama(str(gguf), n_ctx=context, n_threads=threads, n_threads_batch=threads, verbose=False)
    finally:
        llama_cpp.llama_model_default_params = default_params


def check_gguf(model: LlamaForCausalLM, llm, gguf: Path) -> None:
    """A ValueError unless the GGUF is the model's: the same vocabulary (size and token strings, sampled) and depth."""
    architecture = llm.metadata.get("general.architecture", "")
    depth = int(llm.metadata.get(f"{architecture}.block_count", -1))
    problems = []
    if llm.n_vocab() != model.config.vocab_size:
        problems.append(f"a vocabulary of {llm.n_vocab()} tokens, the model {model.config.vocab_size}")
    if depth != model.num_layers:
        problems.append(f"{depth} layers, the model {model.num_layers}")
    tokenizer = getattr(model, "tokenizer", None)
    if not problems and tokenizer is not None:
        n = min(llm.n_vocab(), len(tokenizer))
        ids = sorted({*range(0, n, max(1, n // VOCABULARY_PROBES)), n - 1})
        theirs = [llm._model.token_get_text(i) for i in ids]
        if theirs != tokenizer.convert_ids_to_tokens(ids):
            problems.append("other token strings than the model's tokenizer")
    if problems:
        raise ValueError(f"{gguf.name} is not this model's GGUF: it has {'; '.join(problems)}")


def weight_bytes(model: LlamaForCausalLM) -> int:
    """The bytes of the model's own weights, as one full pass reads them."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def auto_gguf(model: LlamaForCausalLM) -> Path | None:
    """The GGUF `gguf_draft="auto"` drafts with: the model's own where llama.cpp is installed and the model is on a
    CPU; else None."""
    return own_gguf(model) if llama_cpp_installed() and model.device.type == "cpu" else None


def gguf_draft_proposers(model: LlamaForCausalLM, config: SelfDraftConfig, gguf: GGUFDraftConfig) -> list[GGUFDraft]:
    """The GGUF draft `gguf.gguf_draft` asks for: "auto", `auto_gguf`'s (none where there is none); a path, that
    file (llama.cpp missing or a GPU is an error); None, none."""
    path = auto_gguf(model) if gguf.gguf_draft == "auto" else gguf.gguf_draft
    return [] if path is None else [GGUFDraft.of(model, config, path, gguf.gguf_th_stop_draft, gguf.gguf_prompt_window)]
