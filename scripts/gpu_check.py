"""The GPU check: exactness and the costs that decide self-speculative speedups, in a few minutes.

    python scripts/gpu_check.py                       # on a CUDA GPU: under 5 minutes on one H200
    python scripts/gpu_check.py --device cpu --tiny   # the same code on a CPU, tiny models (CI runs it)

1. Exactness. A small random LLaMA with grouped-query attention, initialised
   with a large scale so its logits are far from flat: `base`, `essg` (two
   skip sets, lookups on and off) and stock transformers' greedy `generate`
   on random prompts. float32 must be identical; bfloat16 reports its
   identity rate. Every divergence is listed with its position and the top-2
   logit margin of the full model there.
2. Costs. Random models of Llama-2-7B and 13B shape in bfloat16, built on the
   meta device and materialised on the target device (random init of 13B on
   a CPU takes minutes): ms per token of stock `generate` and of `ssd`'s
   `base` (eager, and compiled when asked), ms per verification of 1..16
   rows, and ms per draft step with the paper's llama-2-13b skip set and, where
   a kernel exists, the int8/int4 self-draft. Random weights time a model
   honestly: the work does not depend on the values.
3. The speedup these costs allow at draft acceptance 0.8, 0.9 and 0.95
   (each drafted token accepted independently with that probability, the
   best draft length from 1 to 16).

Imports only torch, transformers and `ssd`'s model and decoding modules. Prints
tables and writes JSON (`--output`).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from transformers import GenerationConfig, LlamaConfig
from transformers import LlamaForCausalLM as StockLlama

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ssd  # noqa: E402
from ssd.clock import median_seconds  # noqa: E402
from ssd.files import write_json_atomic  # noqa: E402
from ssd.cpu import available_memory  # noqa: E402
from ssd.loading import dtype_name, parse_device  # noqa: E402
from ssd.low_bit import PRECISIONS  # noqa: E402
from ssd.modeling_llama import LlamaForCausalLM  # noqa: E402
from ssd.reports import format_table  # noqa: E402
from ssd.searching import chain_speedup  # noqa: E402
from ssd.skip_layers import load_draft  # noqa: E402

SHAPES = {  # Llama-2's shapes (7B and 13B have no grouped-query attention)
    "llama-2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000),
    "llama-2-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                        num_key_value_heads=40, vocab_size=32000),
}
TINY_SHAPES = {"tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                            num_key_value_heads=2, vocab_size=512)}
EXACTNESS_SHAPE = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=8, num_attention_heads=8,
                       num_key_value_heads=2, vocab_size=2048, max_position_embeddings=512)
# What an int8 and an int4 copy of a layer weight take together, scales included (low_bit.py).
LOW_BIT_BYTES_PER_WEIGHT = 1 + 0.5 + 0.125
SKIP_SETS = {"upper attention": ([5, 6], []), "mixed": ([3, 6], [4, 5])}  # of EXACTNESS_SHAPE's 8 layers
ACCEPTANCE = (0.8, 0.9, 0.95)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny models and few prompts (CI on a CPU)")
    parser.add_argument("--shapes", nargs="+", default=None, choices=list(SHAPES), help=f"cost models (default: {list(SHAPES)})")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also time ssd's compiled blocks (default: on, but not with --tiny)")
    parser.add_argument("--prompts", type=int, default=None, help="exactness prompts (default: 8, tiny: 2)")
    parser.add_argument("--output", type=Path, default=Path("results/gpu_check.json"))
    args = parser.parse_args(argv)
    try:
        parse_device(args.device)
    except ValueError as error:
        parser.error(f"--device: {error}")
    if args.prompts is not None and args.prompts < 1:
        parser.error(f"--prompts must be >= 1, got {args.prompts}")
    return args


def cost_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def bytes_needed(shape: dict, dtype: torch.dtype) -> int:
    """About what one cost model holds at its peak: its weights, and the int8 and int4 copies of its layers
    that its draft timings build (counted on the meta device: nothing is allocated)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**shape, tie_word_embeddings=False))
    weights = sum(p.numel() for p in model.parameters())
    layers = sum(p.numel() for p in model.model.layers.parameters())
    return int(weights * dtype.itemsize + layers * LOW_BIT_BYTES_PER_WEIGHT)


def bytes_available(device: torch.device) -> int | None:
    """Free memory on `device`; None where it cannot be told (a CPU outside Linux)."""
    return torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else available_memory()


def refuse_what_cannot_fit(shapes: dict, device: torch.device) -> None:
    """Exit at once, with the estimate and what to run instead, where a cost model cannot fit the device:
    one model at a time is built, so the largest must fit."""
    dtype = cost_dtype(device)
    name, need = max(((name, bytes_needed(shape, dtype)) for name, shape in shapes.items()), key=lambda item: item[1])
    have = bytes_available(device)
    if have is not None and need > 0.9 * have:
        raise SystemExit(
            f"gpu_check: the {name} cost model needs about {need / 2**30:.1f} GiB on {device} ({dtype_name(dtype)} "
            f"weights and their int8/int4 draft copies), and {device} has {have / 2**30:.1f} GiB free. "
            f"Run with --tiny (tiny models, a minute on a CPU), or --shapes with a smaller model on a larger device."
        )


def timed(run, device: torch.device, repeats: int) -> float:
    """Median milliseconds of `run()` after one warm-up (`ssd.clock.median_seconds`)."""
    return median_seconds(run, device, repeats) * 1000


# --- 1. exactness ----------------------------------------------------------------------


@torch.no_grad()
def exactness_models(device: torch.device, dtype: torch.dtype, tiny: bool):
    """Ours and stock transformers', sharing one set of random weights (std 0.1: logits far from flat)."""
    shape = {**EXACTNESS_SHAPE, **({"hidden_size": 128, "intermediate_size": 256} if tiny else {})}
    config = LlamaConfig(**shape, initializer_range=0.1, tie_word_embeddings=False)
    torch.manual_seed(0)
    ours = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()
    ours.generation_config = GenerationConfig(eos_token_id=None, pad_token_id=0)
    return ours, stock_sharing_weights(ours, device)


@torch.no_grad()
def margin_at(model: LlamaForCausalLM, sequence: torch.Tensor, position: int) -> float:
    """Top-2 logit margin of the full model predicting `sequence[position]`."""
    logits = model(sequence[None, :position], model.new_cache(position), 0, last_only=True)[0, -1]
    top = logits.topk(2).values
    return float(top[0] - top[1])


def first_divergence(reference: torch.Tensor, other: torch.Tensor) -> int | None:
    n = min(len(reference), len(other))
    different = (reference[:n] != other[:n]).nonzero()
    if len(different):
        return int(different[0])
    return None if len(reference) == len(other) else n


@torch.no_grad()
def check_exactness(device: torch.device, dtype: torch.dtype, prompts: int, new_tokens: int, tiny: bool) -> dict:
    ours, stock = exactness_models(device, dtype, tiny)
    generator = torch.Generator().manual_seed(1)
    runs, divergences = 0, []
    for p in range(prompts):
        ids = torch.randint(0, ours.config.vocab_size, (1, 24), generator=generator).to(device)
        base = ssd.generate(ours, ids, method="base", max_new_tokens=new_tokens, eos_token_id=[])[0]
        candidates = {"stock generate": stock.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                                       max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                                       pad_token_id=0)[0]}
        for name, (attention, mlp) in SKIP_SETS.items():
            draft = ssd.Draft.skipping(attention, mlp)
            for lookups, ngram in (("lookups", ssd.DraftConfig.ngram_size), ("no lookups", 0)):
                candidates[f"essg {name}, {lookups}"] = ssd.generate(
                    ours, ids, method="essg", max_new_tokens=new_tokens, eos_token_id=[], ngram_size=ngram, gate=False,
                    draft=draft)[0]
        for name, tokens in candidates.items():
            runs += 1
            at = first_divergence(base, tokens)
            if at is not None:
                divergences.append({"prompt": p, "method": name, "position": at - ids.shape[1],
                                    "margin": margin_at(ours, base, at) if at < len(base) else None})
    return {"dtype": dtype_name(dtype), "runs": runs, "identical": runs - len(divergences),
            "identity_rate": (runs - len(divergences)) / runs, "divergences": divergences}


# --- 2. costs ----------------------------------------------------------------------------


@torch.no_grad()
def random_model(shape: dict, device: torch.device, dtype: torch.dtype, max_len: int) -> LlamaForCausalLM:
    """A random model of `shape`, built on the meta device and materialised on `device`."""
    config = LlamaConfig(**shape, max_position_embeddings=max(4096, max_len), tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(dtype)
    model = model.to_empty(device=device).eval()
    generator = torch.Generator(device).manual_seed(0)
    for name, parameter in model.named_parameters():
        if name.endswith("norm.weight"):
            parameter.fill_(1.0)
        else:
            parameter.normal_(0.0, 0.02, generator=generator)
    model.generation_config = GenerationConfig(eos_token_id=None, pad_token_id=0)
    return model


def stock_sharing_weights(model: LlamaForCausalLM, device: torch.device) -> StockLlama:
    """Stock transformers' LLaMA on `model`'s own weight tensors: built on the meta device, no second copy."""
    with torch.device("meta"):
        stock = StockLlama(model.config)
    stock.load_state_dict(model.state_dict(), strict=False, assign=True)
    with torch.device(device):  # its frequencies are a buffer, not in the state dict
        stock.model.rotary_emb = type(stock.model.rotary_emb)(model.config)
    return stock.eval()


@torch.no_grad()
def measure_costs(name: str, shape: dict, device: torch.device, dtype: torch.dtype, compile_blocks: bool,
                  tiny: bool) -> dict:
    context, tokens, repeats = (64, 8, 3) if tiny else (512, 32, 5)
    model = random_model(shape, device, dtype, context + tokens + 32)
    ids = torch.randint(0, shape["vocab_size"], (1, context), device=device)
    costs = {"model": name, "dtype": dtype_name(dtype)}

    stock = stock_sharing_weights(model, device)
    costs["stock generate ms/token"] = timed(lambda: stock.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens,
        pad_token_id=0), device, 1) / tokens

    costs["base ms/token"] = timed(lambda: ssd.generate(model, ids, method="base", max_new_tokens=tokens,
                                                          eos_token_id=[]), device, 1) / tokens
    cache = model.new_cache(context + 32)
    model(ids, cache, 0)
    step = torch.zeros((1, 1), dtype=torch.long, device=device)
    costs["step ms"] = timed(lambda: model(step, cache, context), device, repeats)
    costs["verify ms"] = {k: timed(lambda k=k: model(torch.zeros((1, k), dtype=torch.long, device=device), cache, context),
                                   device, repeats) for k in range(1, 17)}

    def draft_ms(draft: ssd.Draft) -> float:
        return timed(lambda: model(step, cache, context, draft=draft), device, repeats)

    drafts = {}
    if name == "llama-2-13b":
        drafts["paper skip set"] = draft_ms(load_draft("llama-2-13b", num_layers=model.num_layers))
    for precision in PRECISIONS:
        try:
            draft = model.prepare_draft(ssd.Draft(precision=precision))
        except ValueError as error:
            drafts[precision] = str(error)
            continue
        drafts[precision] = draft_ms(draft)
    costs["draft ms"] = drafts

    if compile_blocks:
        start = time.perf_counter()
        try:
            model.compile_blocks()
        except Exception as error:  # a check reports what fails; the rest of it still runs
            costs["base compiled ms/token"] = f"compile failed: {type(error).__name__}: {str(error).splitlines()[0]}"
        else:
            costs["compile s"] = time.perf_counter() - start
            costs["base compiled ms/token"] = timed(lambda: ssd.generate(
                model, ids, method="base", max_new_tokens=tokens, eos_token_id=[]), device, 1) / tokens
    return costs


def speedups(costs: dict) -> dict:
    step = costs["step ms"]
    verify = tuple(costs["verify ms"][rows] / step for rows in sorted(costs["verify ms"]))  # [k]: k + 1 rows
    table = {}
    for draft, ms in costs["draft ms"].items():
        if isinstance(ms, float):
            table[draft] = {a: chain_speedup(a, ms / step, verify) for a in ACCEPTANCE}
    return table


# --- report ------------------------------------------------------------------------------


def markdown(rows: list[list], header: list[str]) -> str:
    """`ssd.reports.format_table` over rows given as lists."""
    return format_table([dict(zip(header, row)) for row in rows], header)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    prompts = args.prompts or (2 if args.tiny else 8)
    new_tokens = 16 if args.tiny else 64
    shapes = TINY_SHAPES if args.tiny else {name: SHAPES[name] for name in (args.shapes or SHAPES)}
    refuse_what_cannot_fit(shapes, device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    report = {"device": str(device), "hardware": gpu, "torch": torch.__version__, "exactness": [], "costs": []}
    start = time.perf_counter()

    for dtype in (torch.float32, torch.bfloat16):
        result = check_exactness(device, dtype, prompts, new_tokens, args.tiny)
        report["exactness"].append(result)
        print(f"exactness, {result['dtype']}: {result['identical']}/{result['runs']} identical to base", flush=True)
        for d in result["divergences"]:
            print(f"  prompt {d['prompt']}, {d['method']}: parts at new token {d['position']}, "
                  f"top-2 margin {d['margin']}")
    for name, shape in shapes.items():
        costs = measure_costs(name, shape, device, cost_dtype(device),
                              args.compile if args.compile is not None else not args.tiny, args.tiny)
        costs["predicted speedup"] = speedups(costs)
        report["costs"].append(costs)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the model is gone with measure_costs' frame
        print(f"costs, {name}: step {costs['step ms']:.2f} ms", flush=True)

    rows = [[c["model"], c["dtype"], c["stock generate ms/token"], c["base ms/token"], c.get("base compiled ms/token", "-"),
             c["step ms"], c["verify ms"][4] / c["step ms"], c["verify ms"][16] / c["step ms"],
             *[c["draft ms"][d] / c["step ms"] if isinstance(c["draft ms"].get(d), float) else "-"
               for d in ("paper skip set", *PRECISIONS)]] for c in report["costs"]]
    print("\n" + markdown(rows, ["model", "dtype", "stock ms/token", "base ms/token", "base compiled", "step ms",
                                 "verify 4 / step", "verify 16 / step", "paper draft / step",
                                 *[f"{p} draft / step" for p in PRECISIONS]]))
    rows = [[c["model"], draft, *[f"{s:.2f}x (k={k})" for s, k in by_rate.values()]]
            for c in report["costs"] for draft, by_rate in c["predicted speedup"].items()]
    print("\npredicted speedup over base at draft acceptance " + ", ".join(map(str, ACCEPTANCE)) + "\n")
    print(markdown(rows, ["model", "draft", *[f"a={a}" for a in ACCEPTANCE]]))
    report["seconds"] = time.perf_counter() - start
    write_json_atomic(args.output, report)
    print(f"\n{report['seconds']:.0f} s; wrote {args.output}")
    return report


if __name__ == "__main__":
    main()
