"""Shared test helpers (test modules import from here, never from each other): the offline data folder,
tiny and stock reference models, comparing token sequences (a divergence explained by its logit margin),
and the chi-square test of sampled tokens with its broken-rule negative controls."""

import os
import random
import weakref
from pathlib import Path

import torch
from scipy.stats import chisquare
from transformers import GenerationConfig, LlamaConfig

import ssd.core.sampling
from ssd.core.modeling_llama import LlamaForCausalLM
from ssd.core.sampling import Sampling, logits_to_probs
from ssd.tools.data import DATA_DIR_ENV, load_task_data, summarization_prompt

# Models that several tests share (`shared`). Their default draft (a value, `model.default_draft`) is the
# one piece of their state a test may change; conftest's autouse fixtures put it back after every test
# and every module.
SHARED_MODELS: weakref.WeakSet = weakref.WeakSet()


def shared(model: LlamaForCausalLM) -> LlamaForCausalLM:
    """Register a model that tests share, so that one test's default draft never reaches the next."""
    SHARED_MODELS.add(model)
    return model


def threads_per_worker() -> int:
    """Torch threads for one test process: the cores shared among pytest-xdist's workers (at most 4)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, min(4, (os.cpu_count() or 1) // workers))


def data_dir() -> Path | None:
    """The offline CNN/DM and XSum folder ($SSD_DATA_DIR), or None: tests of those tasks then skip."""
    folder = os.environ.get(DATA_DIR_ENV)
    return Path(folder) if folder and Path(folder).is_dir() else None


def fixed_prompts(task: str, n: int, folder: Path | None = None, max_words: int | None = None) -> list[str]:
    """The suite's own inputs: prompts from the first rows of a task's file, in file order (HumanEval/0..;
    for summarisation row 0 the shot, then rows 1..n). Fixed so that the tests' measured margins and
    regression cases keep their texts; which rows an evaluation or the search reads is `task_rows`' rule."""
    rows = load_task_data(task, folder).test
    if task == "humaneval":
        return [row["prompt"] for row in rows[:n]]
    return [summarization_prompt(task, row, rows[0], max_words) for row in rows[1 : n + 1]]


# In float32, batched verification, step-by-step decoding and stock transformers differ only in the
# last bits: up to 4.9e-5 in a logit, measured by test_exactness's
# test_near_tie_margin_covers_the_measured_logit_differences (which fails past half this margin). An
# argmax may flip between two of them only where the top two logits are closer than their two errors
# together, so a divergence at a wider margin than this is a bug, not a near-tie.
NEAR_TIE_FLOAT32 = 4e-4


def random_skip_set(num_layers: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A random `fraction` of all 2*L sub-layers, reproducible by seed."""
    rng = random.Random(seed)
    chosen = rng.sample(range(2 * num_layers), round(2 * num_layers * fraction))
    return sorted(i for i in chosen if i < num_layers), sorted(i - num_layers for i in chosen if i >= num_layers)


@torch.no_grad()
def top2_margin(model, input_ids: torch.Tensor, prefix: list[int]) -> float:
    """The full model's gap between its two best logits after prompt + prefix."""
    ids = torch.cat([input_ids[0].cpu(), torch.tensor(prefix, dtype=torch.long)])[None].to(model.device)
    logits = model(ids, model.new_cache(ids.shape[1]), 0)[0, -1]
    top = torch.topk(logits.float(), 2).values
    return float(top[0] - top[1])


def assert_same_tokens(expected: list[int], got: list[int], model, input_ids, near_tie: float, label: str) -> None:
    """Token identity; a divergence passes only at a near-tie, and is reported."""
    if expected == got:
        return
    position = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
    if position == min(len(expected), len(got)):
        raise AssertionError(f"{label}: lengths differ ({len(expected)} vs {len(got)}) with a common prefix")
    margin = top2_margin(model, input_ids, expected[:position])
    report = f"{label}: diverges at new token {position} ({expected[position]} vs {got[position]}), top-2 logit margin {margin:.3g}"
    print(report)
    assert margin < near_tie, report + f" is not a near-tie (< {near_tie})"


# --- reference models ----------------------------------------------------------------


def tiny_llama(**overrides) -> LlamaForCausalLM:
    """A 4-layer random LLaMA in ssd's class (seeded): fast model-level tests that need no real weights."""
    config = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    config.update(overrides)
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**config)).eval()


def stock_greedy(stock, input_ids, max_new_tokens, eos_token_id=None) -> list[int]:
    """Stock transformers greedy generate (stops at EOS, as ours does with early_stop=True): at
    `eos_token_id` (an id or a list) when given, else at the model's own. The attention mask is given:
    inferred, it would mask every prompt token equal to the pad id (here EOS, `<|im_end|>`)."""
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=stock.config.eos_token_id)
    if eos_token_id is not None:
        config.eos_token_id = eos_token_id
    mask = torch.ones_like(input_ids)
    return stock.generate(input_ids, attention_mask=mask, generation_config=config)[0, input_ids.shape[1] :].tolist()


# --- sampled distributions ---------------------------------------------------------------

# Significance of the chi-square tests: a correct sampler fails one with probability 1e-3,
# a broken rule must give a p-value below it.
ALPHA = 1e-3

# The sampled tests' setting: temperature 1 over the 6 likeliest tokens, so that 100 trials fill the
# chi-square's cells, and one prompt for them all.
SAMPLING = Sampling(temperature=1.0, top_k=6)
SAMPLED_PROMPT = "The three most important inventions of the"


@torch.no_grad()
def exact_token_marginal(model, input_ids: torch.Tensor, sampling, n: int) -> torch.Tensor:
    """P(the n-th new token = y) when sampling the full model with `sampling`: every earlier token it
    can sample, summed over (n = 2: p(t1) p(y | t1); n = 3: over t1 and t2)."""
    length = input_ids.shape[1]
    cache = model.new_cache(length + n - 1)

    def marginal(logits: torch.Tensor, depth: int) -> torch.Tensor:
        p = logits_to_probs(logits, sampling)
        if depth == n:
            return p
        total = torch.zeros_like(p)
        for token in torch.nonzero(p).flatten().tolist():  # each path writes its own positions first
            total += p[token] * marginal(model(torch.tensor([[token]]), cache, length + depth - 1)[0, -1], depth + 1)
        return total

    return marginal(model(input_ids, cache, 0)[0, -1], 1)


def sample_counts(draw, expected: torch.Tensor, trials: int) -> torch.Tensor:
    """How often each token came out of `trials` calls of `draw()`. Sampling stops at the first token
    `expected` forbids: the chi-square p-value is 0 from then on, whatever the remaining trials give."""
    counts = torch.zeros_like(expected)
    for _ in range(trials):
        token = draw()
        counts[token] += 1
        if expected[token] == 0:
            break
    return counts


def chi_square_p_value(counts: torch.Tensor, expected: torch.Tensor, trials: int) -> float:
    """Chi-square p-value of token `counts` (over the vocabulary) against the exact distribution `expected`.

    Bins with an expected count of 5 or more, the rest pooled into one; a sampled
    token the exact distribution gives probability 0 is impossible under the null: 0.
    """
    if counts[expected == 0].sum() > 0:
        return 0.0
    big = expected * trials >= 5
    observed = torch.cat([counts[big], counts[~big].sum()[None]]).double()
    wanted = torch.cat([expected[big], expected[~big].sum()[None]]).double()
    return float(chisquare(observed.numpy(), (wanted / wanted.sum() * trials).numpy()).pvalue)


def accept_everything(target_logits, drafts, draft_probs, sampling, generator):
    """A broken `verify_drafts`: every draft accepted, so tokens follow the draft's distribution."""
    p = logits_to_probs(target_logits, sampling)
    return len(drafts), int(ssd.core.sampling.sample(p[len(drafts)], generator))
