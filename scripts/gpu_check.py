"""The first contact with a GPU: does the README's path run there, is the output exact, what do steps cost.

    python scripts/gpu_check.py                       # on a CUDA GPU (several: the hooks check spreads over them)
    python scripts/gpu_check.py --device cpu --tiny   # the same checks on a CPU, tiny models (CI runs it)

Each check is a row of one table (printed, and written with the whole report as JSON, `--output`); a
check that fails says why in its row and the others still run. The exit status is 1 if one failed.

1. The device: torch, CUDA and compute capability, native bfloat16
   (`torch.cuda.is_bf16_supported(including_emulation=False)`), and what `ssd` picks there
   (`ssd.fast.device.DeviceProfile`: dtype, low-bit draft kernels).
2. The demo: `python -m ssd.tools.bench` on the embedded model, as `scripts/demo.sh` runs it, with one chat
   prompt, 16 tokens, `base`, `hybrid`, `essg` and `sss`, and the package's defaults for the device.
3. A checkpoint that samples by default: LLaMA-2's `generation_config` on a random model; the bench's
   runners must decode greedily, `essg` equal to `base`.
4. Several devices: a small random grouped-query model under accelerate's hooks, each block an entry of
   the device map (over every GPU when there are several), through every method: the greedy ones and
   stock `generate` on the same weights equal `base`; sampled `hybrid` runs.
5. Exactness rates: `base`, `essg` (two skip sets, lookups on and off) and stock greedy `generate` on
   random prompts, in float32 and in the device's half precision (bfloat16, or float16 before Ampere), at
   Llama-2-7B's shape where its float32 weights fit (else, and with `--tiny`, a small one). A random model
   initialised with a large scale has logits far from flat; every divergence is listed with its position
   and the full model's top-2 logit margin there.
6. Costs at Llama-2-7B's shape in the dtype `ssd` picks (random weights time a model honestly: the work does not
   depend on the values), device synchronised: stock `generate` and `base` per token, eager and
   compiled; a step; verifications of 1..16 rows; a draft step at each low-bit precision with a kernel
   (and with the paper's Llama-2-13B skip set, `--shapes llama-2-13b`); and the speedups those costs
   allow at draft acceptance 0.8, 0.9 and 0.95 (each drafted token accepted independently). A model that
   does not fit the device's free memory is skipped, saying so.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

import accelerate
import torch
from transformers import GenerationConfig, LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ssd  # noqa: E402
from ssd.core.clock import median_seconds  # noqa: E402
from ssd.core.draft import PRECISIONS  # noqa: E402
from ssd.core.files import write_json_atomic  # noqa: E402
from ssd.core.modeling_llama import LlamaForCausalLM  # noqa: E402
from ssd.core.skip_layers import load_draft  # noqa: E402
from ssd.fast.device import DeviceProfile, dtype_name  # noqa: E402
from ssd.loading.model import free_memory, parse_device, stock_twin  # noqa: E402
from ssd.tools import bench  # noqa: E402
from ssd.tools.reports import format_table  # noqa: E402
from ssd.tools.timing import generate_method  # noqa: E402

SHAPES = {  # Llama-2's shapes (7B and 13B have no grouped-query attention)
    "llama-2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000),
    "llama-2-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                        num_key_value_heads=40, vocab_size=32000),
}
TINY_SHAPES = {"tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                            num_key_value_heads=2, vocab_size=512)}
# Random models for exactness: std 1.6/sqrt(hidden) puts logits far from flat (0.1 at hidden 256).
EXACTNESS_SHAPES = {
    "llama-2-7b": dict(SHAPES["llama-2-7b"], initializer_range=0.025),
    "small": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=2, vocab_size=2048, initializer_range=0.1),
}
# The hooks check's model: grouped-query attention, 8 layers to spread over the devices.
HOOKS_SHAPE = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=8, num_attention_heads=8,
                   num_key_value_heads=2, vocab_size=2048, initializer_range=0.1)
# What a low-bit copy of a layer weight takes per weight, scales included (low_bit.py).
LOW_BIT_BYTES_PER_WEIGHT = {"int8": 1.0, "int4": 0.5 + 0.125}
SKIP_SETS = {"upper attention": ([5, 6], []), "mixed": ([3, 6], [4, 5])}  # of an 8-layer model
ACCEPTANCE = (0.8, 0.9, 0.95)
# LLaMA-2's generation_config.json (meta-llama/Llama-2-7b-hf, -13b-hf): sampling by default.
LLAMA_2_GENERATION = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0, do_sample=True, temperature=0.6,
                          top_p=0.9, max_length=4096)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny models and few prompts (CI on a CPU)")
    parser.add_argument("--shapes", nargs="+", default=None, choices=list(SHAPES),
                        help="cost models (default: llama-2-7b)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also time ssd's compiled blocks (default: on, but not with --tiny)")
    parser.add_argument("--prompts", type=int, default=None, help="exactness prompts (default: 4, tiny: 2)")
    parser.add_argument("--output", type=Path, default=Path("results/gpu_check.json"))
    args = parser.parse_args(argv)
    try:
        parse_device(args.device)
    except ValueError as error:
        parser.error(f"--device: {error}")
    if args.prompts is not None and args.prompts < 1:
        parser.error(f"--prompts must be >= 1, got {args.prompts}")
    return args


def bytes_needed(shape: dict, dtype: torch.dtype, low_bit: tuple[str, ...] = ()) -> int:
    """What one random model of `shape` holds at its peak: its weights, and the copies of its layers at
    each of `low_bit`'s precisions that its draft timings build (counted on the meta device)."""
    config = LlamaConfig(**{k: v for k, v in shape.items() if k != "initializer_range"}, tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    weights = sum(p.numel() for p in model.parameters())
    layers = sum(p.numel() for p in model.model.layers.parameters())
    copies = sum(LOW_BIT_BYTES_PER_WEIGHT[precision] for precision in low_bit)
    return int(weights * dtype.itemsize + layers * copies)


def bytes_available(device: torch.device) -> int | None:
    """Free memory on `device`; None where it cannot be told (a CPU outside Linux)."""
    return free_memory(device)


def too_large(what: str, need: int, device: torch.device) -> str | None:
    """Why `what` cannot be built on `device` (needing `need` bytes, with a tenth to spare), or None."""
    have = bytes_available(device)
    if have is None or need <= 0.9 * have:
        return None
    return f"{what} needs about {need / 2**30:.1f} GiB on {device}, which has {have / 2**30:.1f} GiB free"


def exactness_shape(device: torch.device, tiny: bool) -> tuple[str, str | None]:
    """The exactness model's shape: Llama-2-7B's where its float32 weights fit, else the small one (and why)."""
    if tiny:
        return "small", None
    why = too_large("Llama-2-7B's shape in float32", bytes_needed(EXACTNESS_SHAPES["llama-2-7b"], torch.float32), device)
    return ("small", why) if why else ("llama-2-7b", None)


def median_ms(run, device: torch.device, repeats: int) -> float:
    """Median milliseconds of `run()` after one warm-up (`ssd.core.clock.median_seconds`)."""
    return median_seconds(run, device, repeats) * 1000


@torch.no_grad()
def random_llama(shape: dict, device: torch.device, dtype: torch.dtype, max_len: int = 4096, seed: int = 0):
    """A random model of `shape` (its `initializer_range` the weights' std, default 0.02; norms 1), built on
    the meta device and materialised on `device`: random init of 7B on a CPU would take minutes."""
    shape = dict(shape)
    std = shape.pop("initializer_range", 0.02)
    config = LlamaConfig(**shape, max_position_embeddings=max(4096, max_len), tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(dtype)
    model = model.to_empty(device=device).eval()
    generator = torch.Generator(device).manual_seed(seed)
    for name, parameter in model.named_parameters():
        if name.endswith("norm.weight"):
            parameter.fill_(1.0)
        else:
            parameter.normal_(0.0, std, generator=generator)
    model.generation_config = GenerationConfig(eos_token_id=None, pad_token_id=0)
    return model


# --- 1. the device -------------------------------------------------------------------------


def device_facts(device: torch.device) -> dict:
    profile = DeviceProfile.of(device)
    facts = {"device": str(device), "hardware": profile.name, "torch": torch.__version__,
             "native bfloat16": profile.native_bfloat16, "dtype ssd picks": dtype_name(profile.dtype),
             "low-bit draft kernels": list(profile.low_bit), "compiles by default": profile.compiles(profile.dtype)}
    if device.type == "cuda":
        facts |= {"cuda": torch.version.cuda, "compute capability": ".".join(map(str, profile.capability)),
                  "is_bf16_supported(including_emulation=False)": torch.cuda.is_bf16_supported(including_emulation=False),
                  "gpus": torch.cuda.device_count()}
    return facts


def describe_device(facts: dict) -> str:
    cuda = (f", CUDA {facts['cuda']}, capability {facts['compute capability']}, {facts['gpus']} GPU(s), "
            f"is_bf16_supported(including_emulation=False) {facts['is_bf16_supported(including_emulation=False)']}"
            if "cuda" in facts else "")
    return (f"{facts['hardware']}, torch {facts['torch']}{cuda}; ssd picks {facts['dtype ssd picks']}, "
            f"low-bit drafts {facts['low-bit draft kernels'] or 'none'}, compile {facts['compiles by default']}")


# --- 2. the demo ---------------------------------------------------------------------------


def check_demo(device: torch.device, tiny: bool, folder: Path) -> dict:
    """`python -m ssd.tools.bench` as the demo runs it, small: its rows over all tasks."""
    argv = ["--device", str(device), "--tasks", "chat", "--num-prompts", "1", "--max-new-tokens", "16",
            "--methods", "base", "hybrid", "essg", "sss", "--output", str(folder / "gpu_check_demo")]
    rows = bench.main(argv + (["--no-compile"] if tiny else []))
    by_method = {row["method"]: row for row in rows if row["task"] == "all"}
    essg, hybrid = by_method["essg"], by_method["hybrid"]
    return {"rows": rows, "ok": all(by_method[m]["new_tokens"] == 16 for m in ("hybrid", "essg", "sss")),
            "summary": f"hybrid {hybrid['speedup']:.2f}x base, identical on {hybrid['identical']}/{hybrid['prompts']}; "
                       f"essg {essg['speedup']:.2f}x, identical on {essg['identical']}/{essg['prompts']}; "
                       f"sss {by_method['sss']['speedup']:.2f}x"}


# --- 3. a checkpoint that samples by default --------------------------------------------------


@torch.no_grad()
def check_sampling_defaults(device: torch.device) -> dict:
    """The bench's runners on a model whose generation_config samples: `base` must be greedy decoding, and
    `essg` must run (it refused to: "essg is greedy")."""
    model = random_llama(HOOKS_SHAPE, device, torch.float32)
    model.generation_config = GenerationConfig(**LLAMA_2_GENERATION)
    ids = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(3)).to(device)
    greedy = ssd.generate(model, ids, method="base", do_sample=False, max_new_tokens=16, eos_token_id=[])[0, 16:].tolist()
    base = generate_method(model, "base", 16)(ids, "t").tokens
    essg = generate_method(model, "essg", 16, draft=ssd.Draft.skipping(*SKIP_SETS["mixed"]), gate=False)(ids, "t").tokens
    parted = first_divergence(base, essg)
    return {"ok": base == greedy and len(essg) == 16, "summary": f"the bench's base is greedy: {base == greedy}; essg ran"
            + (", equal to base" if parted is None else f", parting from base at new token {parted}")}


# --- 4. several devices ----------------------------------------------------------------------


def spread_map(model: LlamaForCausalLM, device: torch.device) -> dict:
    """A device map with every block its own entry: on a GPU, layer i on GPU i * n // L of n."""
    count = torch.cuda.device_count() if device.type == "cuda" and device.index is None else 1
    place = (lambda i: f"cuda:{i * count // model.num_layers}") if count > 1 else (lambda i: str(device))
    return {"model.embed_tokens": place(0), **{f"model.layers.{i}": place(i) for i in range(model.num_layers)},
            "model.norm": place(model.num_layers - 1), "lm_head": place(model.num_layers - 1)}


@torch.no_grad()
def check_hooks(device: torch.device, new_tokens: int) -> dict:
    model = random_llama(HOOKS_SHAPE, torch.device("cpu"), torch.float32, seed=1)
    device_map = spread_map(model, device)
    model = accelerate.dispatch_model(model, device_map, force_hooks=True)
    model.set_skip_layers(*SKIP_SETS["mixed"])
    ids = torch.randint(0, model.config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(2)).to(model.device)
    base = generate_method(model, "base", new_tokens)(ids, "t").tokens
    runs = {
        "hybrid": generate_method(model, "hybrid", new_tokens, gate=False),
        "hybrid trees": generate_method(model, "hybrid", new_tokens, lookup_ways=3, branches=2),
        "essg": generate_method(model, "essg", new_tokens, draft=ssd.Draft.skipping(*SKIP_SETS["mixed"])),
        "clasp": generate_method(model, "clasp", new_tokens, gate=False),
        "recycling": generate_method(model, "recycling", new_tokens),
        "swift": generate_method(model, "swift", new_tokens, swift=ssd.SwiftConfig(context_window=8, max_opt_iter=4)),
        "stock generate": bench.hf_method(stock_twin(model), new_tokens),
    }
    parted = {}
    for name, run in runs.items():
        tokens = run(ids, "t").tokens
        if tokens != base:
            parted[name] = first_divergence(base, tokens)
    sampled = generate_method(model, "hybrid", new_tokens, do_sample=True,
                              generator=torch.Generator(model.device).manual_seed(0))(ids, "t").tokens
    devices = sorted(set(device_map.values()))
    identical = [name for name in runs if name not in parted]
    ours_parted = set(parted) - {"stock generate"}  # stock kernels may part at a near-tie even on a CPU
    return {"devices": devices, "parted": parted, "ok": len(sampled) == new_tokens and (device.type != "cpu" or not ours_parted),
            "summary": f"over {len(devices)} device(s) {devices}: equal to base: {', '.join(identical) or 'none'}"
                       + (f"; parted (at new token): {parted}" if parted else "") + "; sampled hybrid ran"}


# --- 5. exactness --------------------------------------------------------------------------


@torch.no_grad()
def margin_at(model: LlamaForCausalLM, sequence: torch.Tensor, position: int) -> float:
    """Top-2 logit margin of the full model predicting `sequence[position]`."""
    logits = model(sequence[None, :position], model.new_cache(position), 0, last_only=True)[0, -1]
    top = logits.topk(2).values
    return float(top[0] - top[1])


def first_divergence(reference, other) -> int | None:
    reference, other = torch.as_tensor(reference), torch.as_tensor(other)
    n = min(len(reference), len(other))
    different = (reference[:n].cpu() != other[:n].cpu()).nonzero()
    if len(different):
        return int(different[0])
    return None if len(reference) == len(other) else n


@torch.no_grad()
def check_exactness(device: torch.device, dtype: torch.dtype, shape_name: str, prompts: int, new_tokens: int) -> dict:
    ours = random_llama(EXACTNESS_SHAPES[shape_name], device, dtype)
    stock = stock_twin(ours)
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
            for lookups, ngram in (("lookups", ssd.DraftConfig().lookup.ngram_size), ("no lookups", 0)):
                candidates[f"essg {name}, {lookups}"] = ssd.generate(
                    ours, ids, method="essg", max_new_tokens=new_tokens, eos_token_id=[], ngram_size=ngram, gate=False,
                    draft=draft)[0]
        for name, tokens in candidates.items():
            runs += 1
            at = first_divergence(base, tokens)
            if at is not None:
                divergences.append({"prompt": p, "method": name, "position": at - ids.shape[1],
                                    "margin": margin_at(ours, base, at) if at < len(base) else None})
    del ours, stock
    return {"dtype": dtype_name(dtype), "shape": shape_name, "runs": runs, "identical": runs - len(divergences),
            "identity_rate": (runs - len(divergences)) / runs, "divergences": divergences}


# --- 6. costs ----------------------------------------------------------------------------


@torch.no_grad()
def measure_costs(name: str, shape: dict, device: torch.device, dtype: torch.dtype, compile_blocks: bool,
                  tiny: bool) -> dict:
    context, tokens, repeats = (64, 8, 3) if tiny else (512, 32, 5)
    model = random_llama(shape, device, dtype, context + tokens + 32)
    ids = torch.randint(0, shape["vocab_size"], (1, context), device=device)
    costs = {"model": name, "dtype": dtype_name(dtype)}

    stock = stock_twin(model)
    costs["stock generate ms/token"] = median_ms(lambda: stock.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens,
        pad_token_id=0), device, 1) / tokens

    costs["base ms/token"] = median_ms(lambda: ssd.generate(model, ids, method="base", max_new_tokens=tokens,
                                                          eos_token_id=[]), device, 1) / tokens
    cache = model.new_cache(context + 32)
    model(ids, cache, 0)
    step = torch.zeros((1, 1), dtype=torch.long, device=device)
    costs["step ms"] = median_ms(lambda: model(step, cache, context), device, repeats)
    costs["verify ms"] = {k: median_ms(lambda k=k: model(torch.zeros((1, k), dtype=torch.long, device=device), cache, context),
                                   device, repeats) for k in range(1, 17)}

    def draft_ms(draft: ssd.Draft) -> float:
        return median_ms(lambda: model(step, cache, context, draft=draft), device, repeats)

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
            costs["base compiled ms/token"] = median_ms(lambda: ssd.generate(
                model, ids, method="base", max_new_tokens=tokens, eos_token_id=[]), device, 1) / tokens
            costs["step compiled ms"] = median_ms(lambda: model(step, cache, context), device, repeats)
    return costs


def chain_speedup(acceptance: float, draft_cost: float, verify_cost: tuple[float, ...]) -> tuple[float, int]:
    """`ssd.core.searching.predicted_speedup`'s expectation where every drafted token is accepted
    independently with probability `acceptance` and each step drafts k tokens: (speedup over base, the
    best k). Expected tokens per step (1 - a^(k+1)) / (1 - a), cost k * draft_cost + verify_cost[k], in
    full-step units (`verify_cost[k]`: verifying k drafts, k + 1 rows). For a device whose acceptance is
    not yet known."""
    best = (0.0, 0)
    for k in range(1, len(verify_cost)):
        tokens = (1 - acceptance ** (k + 1)) / (1 - acceptance)
        best = max(best, (tokens / (k * draft_cost + verify_cost[k]), k))
    return best


def speedups(costs: dict) -> dict:
    step = costs["step ms"]
    verify = tuple(costs["verify ms"][rows] / step for rows in sorted(costs["verify ms"]))  # [k]: k + 1 rows
    table = {}
    for draft, ms in costs["draft ms"].items():
        if isinstance(ms, float):
            table[draft] = {a: chain_speedup(a, ms / step, verify) for a in ACCEPTANCE}
    return table


def describe_costs(c: dict) -> str:
    step = c["step ms"]
    compiled = c.get("base compiled ms/token", "not timed")
    compiled = f"{compiled:.2f}" if isinstance(compiled, float) else compiled
    parts = [f"step {step:.2f} ms" + (f" ({c['step compiled ms']:.2f} compiled)" if "step compiled ms" in c else ""),
             f"ms/token: stock generate {c['stock generate ms/token']:.2f}, base {c['base ms/token']:.2f}, "
             f"base compiled {compiled}",
             f"verify 4/16 rows: {c['verify ms'][4] / step:.2f}/{c['verify ms'][16] / step:.2f} steps"]
    for draft, ms in c["draft ms"].items():
        if isinstance(ms, float):
            best = c["predicted speedup"][draft][0.9]
            parts.append(f"{draft} draft {ms / step:.2f} step (at acceptance 0.9: {best[0]:.2f}x, k={best[1]})")
        else:
            parts.append(f"{draft}: {ms}")
    return "; ".join(parts)


# --- report ------------------------------------------------------------------------------


def run_check(report: dict, output: Path, name: str, check) -> dict | None:
    """One check: its result, or its error, in the report (written at once: a crash later loses nothing);
    the other checks run either way."""
    start = time.perf_counter()
    try:
        result = check()
    except Exception as error:  # a first-contact check reports what fails and goes on
        result = None
        report["checks"].append({"check": name, "result": f"FAILED: {type(error).__name__}: {error}"[:400], "ok": False,
                                 "seconds": time.perf_counter() - start, "traceback": traceback.format_exc()})
    else:
        report["checks"].append({"check": name, "result": result.pop("summary"), "ok": result.get("ok", True),
                                 "seconds": time.perf_counter() - start})
        report[name] = result
    print(f"{name}: {report['checks'][-1]['result']}", flush=True)
    write_json_atomic(output, report)
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    profile = DeviceProfile.of(device)
    prompts = args.prompts or (2 if args.tiny else 4)
    new_tokens = 16 if args.tiny else 32
    shapes = TINY_SHAPES if args.tiny else {name: SHAPES[name] for name in (args.shapes or ["llama-2-7b"])}
    report = {"device": str(device), "checks": []}
    start = time.perf_counter()

    def check(name, run):
        return run_check(report, args.output, name, run)

    facts = device_facts(device)
    report["facts"] = facts
    report["checks"].append({"check": "device", "result": describe_device(facts), "ok": True})
    with tempfile.TemporaryDirectory() as folder:
        check("demo bench (embedded model, 1 chat prompt, 16 tokens)", lambda: check_demo(device, args.tiny, Path(folder)))
    check("LLaMA-2 generation_config (do_sample: true)", lambda: check_sampling_defaults(device))
    check("accelerate's hooks, every method", lambda: check_hooks(device, new_tokens))
    report["exactness"] = []
    shape_name, smaller = exactness_shape(device, args.tiny)
    for dtype in (torch.float32, profile.dtype if profile.dtype != torch.float32 else torch.bfloat16):
        def exactness(dtype=dtype):
            result = check_exactness(device, dtype, shape_name, prompts, new_tokens)
            report["exactness"].append(result)
            worst = ", ".join(f"{d['method']} at {d['position']} (margin {d['margin']:.3g})" for d in result["divergences"][:3]
                              if d["margin"] is not None)
            return {"ok": dtype != torch.float32 or device.type != "cpu" or result["identical"] == result["runs"],
                    "summary": f"{result['identical']}/{result['runs']} identical to base" + (f"; e.g. {worst}" if worst else "")
                               + (f" (the small shape: {smaller})" if smaller else "")}
        check(f"exactness, {dtype_name(dtype)}, {shape_name} shape", exactness)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["costs"] = []
    for name, shape in shapes.items():
        def costs(name=name, shape=shape):
            why = too_large(f"the {name} cost model ({dtype_name(profile.dtype)}, with its low-bit draft copies)",
                            bytes_needed(shape, profile.dtype, profile.low_bit), device)
            if why:
                return {"summary": f"skipped: {why}", "skipped": True}
            result = measure_costs(name, shape, device, profile.dtype,
                                   args.compile if args.compile is not None else not args.tiny, args.tiny)
            result["predicted speedup"] = speedups(result)
            report["costs"].append(result)
            return {"summary": describe_costs(result)}
        check(f"costs, {name}, {dtype_name(profile.dtype)}", costs)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    report["seconds"] = time.perf_counter() - start
    rows = [{"check": row["check"], "ok": "yes" if row["ok"] else "NO", "result": row["result"]} for row in report["checks"]]
    print("\n" + format_table(rows, ["check", "ok", "result"]))
    write_json_atomic(args.output, report)
    print(f"\n{report['seconds']:.0f} s; wrote {args.output}")
    return report


if __name__ == "__main__":
    sys.exit(0 if all(row["ok"] for row in main()["checks"]) else 1)
