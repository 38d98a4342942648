"""`python -m ssd.tools.bench`: every decoder, ours and Hugging Face's, on the same prompts in one run.

Methods alternate per prompt (`ssd.tools.timing`, the harness every comparison
uses), so drift of a shared machine lands on all of them alike. Every method generates exactly
`--max-new-tokens` tokens (no stop at EOS), greedy except `sss`.

By default it runs the methods a newcomer compares (`DEFAULT_METHODS`, a few
minutes on 2 cores) on every task whose data is at hand: the prompts that ship
with ssd and HumanEval always, CNN/DM and XSum when a data folder or the hub
provides them (else one line says they were skipped and how to add them).
`--full` runs every method.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch
from transformers import GenerationConfig

from ssd.core.draft import Draft
from ssd.core.files import write_json_atomic
from ssd.core.skip_layers import DEFAULT_PATH as SKIP_LAYERS_PATH
from ssd.fast.device import dtype_name
from ssd.generation import encode_inputs, method_names
from ssd.loading.checkpoints import named_gguf
from ssd.loading.logs import without_message
from ssd.loading.model import check_load_arguments, load_model, parse_device, parse_dtype, stock_twin
from ssd.methods.gguf_draft import auto_gguf, llama_cpp_installed, open_gguf
from ssd.methods.paper import paper_draft
from ssd.methods.swift import SwiftConfig, SwiftOptimizer
from ssd.tools.data import DATA_DIR_ENV, TASKS, DataUnavailable, task_prompts
from ssd.tools.evaluation import apply_draft, check_draft_key
from ssd.tools.prompts import PROMPTS_FILE, WARM_UP, encode, read_prompts_file
from ssd.tools.reports import format_table
from ssd.tools.timing import Method, Run, generate_method, run_side_by_side, tabulate_speed

EXTRA_TASKS = ("qa", "writing", "chat")  # the tasks of the prompts that ship with ssd (`PROMPTS_FILE`)
ALL_TASKS = (*TASKS, *EXTRA_TASKS)
STOCK_METHODS = ("hf", "hf-pld", "hf-early-exit")  # stock generate and its two built-in speculative decoders
# The peer a CPU user would pick instead: llama.cpp on the model's GGUF, from the optional `llama` extra
# (pip install -e ".[llama]"). It computes with quantised activations, so its tokens may differ.
PEER_METHODS = ("llama-cpp",)
# Stock generate and prompt lookup, ours without and with drafts, and sampling. `--full` adds stock early exit
# (slow on a model not trained for it) and SWIFT's cold start (its optimisation
# passes outweigh what they save on a few short prompts).
GGUF_DRAFT_OFFER = ('llama.cpp\'s GGUF draft is off here: `.venv/bin/pip install -e ".[llama]"` (builds llama-cpp-python, '
                    'about 5 minutes on 2 cores, once) lets the default method draft with it (docs/usage.md, "The GGUF draft").')
DEFAULT_METHODS = ("hf", "hf-pld", "base", "hybrid", "essg", "self-draft", "sss")


def bench_methods() -> tuple[str, ...]:
    """Stock generate's methods, then every method of `ssd.generate` (`ssd.method_names`: a method
    registered with `ssd.register_method` is benched too: `hybrid`, the default, and the paper's `essg` and
    `sss` among them), "self-draft" (hybrid with lookups and the GGUF draft off), "hybrid-no-gguf" (hybrid
    without llama.cpp's GGUF draft, as it runs where llama.cpp is not installed), "gguf-draft" (the GGUF draft
    alone, under the gate), "hybrid-trees" (hybrid with token trees: up to 3 continuations of a lookup, the
    draft's 2 runners-up where it stopped) and "swift-cached" (SWIFT from the set `skip_layers.json` stores
    for the model and task, `swift_method`)."""
    ours = method_names()
    variants = ("self-draft", "hybrid-no-gguf", "gguf-draft", "hybrid-trees")
    return (*STOCK_METHODS, *PEER_METHODS, *ours[:2], *variants, *ours[2:], "swift-cached")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ssd.tools.bench", description=__doc__)
    parser.add_argument("--model", default=None, help="hub id or folder of a LLaMA or Qwen2 checkpoint, or qwen2.5-coder-1.5b-instruct (default: the embedded SmolLM2)")
    parser.add_argument("--skip-layers-key", default=None, help="draft entry of skip_layers.json (default: the model's)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the fastest exact one)")
    parser.add_argument("--also-dtype", default=None,
                        help="also run every method, ours and stock, with the model in this dtype, side by side "
                             "(as METHOD@DTYPE; speedup over base@DTYPE; not compared with base for identity)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--device-map", default=None,
                        help='accelerate\'s placement over several GPUs, e.g. "auto"; stock generate runs on the same weights, placed alike (overrides --device)')
    parser.add_argument("--draft-precision", default="default", choices=["default", "none", "int8", "int4"],
                        help="precision of the weights the self-draft runs (default: load_model's choice, or the draft entry's)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile ssd's layer blocks, for every pass after the prefill (default: load_model's choice, on for a CPU)")
    parser.add_argument("--pack-weights", action=argparse.BooleanOptionalAction, default=None,
                        help="run bfloat16 products on weights packed in oneDNN's layout (default: load_model's choice, on for a CPU with native bfloat16)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--tasks", nargs="+", default=None,
                        help=f"from {', '.join(ALL_TASKS)} (default: all whose data is at hand; named here, a task "
                             "without data is an error)")
    parser.add_argument("--prompts", type=Path, default=None, help='JSONL of {"prompt": ..., "task": ...} (replaces --tasks)')
    parser.add_argument("--num-prompts", type=int, default=2, help="prompts per task")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--max-words", type=int, default=400, help="clip each article to this many words")
    parser.add_argument("--data-dir", default=None, help="folder of cnndm*.jsonl / xsum*.jsonl (or $SSD_DATA_DIR)")
    methods = bench_methods()
    parser.add_argument("--methods", nargs="+", default=None,
                        help=f"from {', '.join(methods)} (default: {', '.join(DEFAULT_METHODS)})")
    parser.add_argument("--full", action="store_true", help="run every method (the default list adds "
                        f"{', '.join(m for m in methods if m not in DEFAULT_METHODS)})")
    parser.add_argument("--prompt-lookup-tokens", type=int, default=10, help="hf-pld: prompt_lookup_num_tokens")
    parser.add_argument("--early-exit-layer", type=int, default=None, help="hf-early-exit: assistant_early_exit (default: half the layers)")
    parser.add_argument("--output", type=Path, default=Path("results/bench"), help="writes OUTPUT.json and OUTPUT.png")
    args = parser.parse_args(argv)
    for name in ("num_prompts", "max_new_tokens", "max_words", "prompt_lookup_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.early_exit_layer is not None and args.early_exit_layer < 1:
        parser.error(f"--early-exit-layer must be >= 1, got {args.early_exit_layer}")
    if args.full and args.methods is not None:
        parser.error("--full runs every method; give --full or --methods, not both")
    if args.full:  # every method, the optional peer where it is installed
        methods = tuple(m for m in methods if m not in PEER_METHODS or llama_cpp_installed())
    args.methods = list(methods if args.full else args.methods or DEFAULT_METHODS)
    if unknown := sorted(set(args.tasks or ()) - set(ALL_TASKS)):
        parser.error(f"unknown tasks {unknown}; choose from {list(ALL_TASKS)}")
    if unknown := sorted(set(args.methods) - set(methods)):
        parser.error(f"unknown methods {unknown}; choose from {list(methods)}")
    if "base" not in args.methods:
        parser.error("--methods must include base: every speedup and identity is measured against it")
    if "llama-cpp" in args.methods and not llama_cpp_installed():
        parser.error('llama-cpp needs the optional llama extra: pip install -e ".[llama]" (llama-cpp-python, built from source)')
    for name in ("dtype", "also_dtype"):
        try:
            setattr(args, name, parse_dtype(getattr(args, name)))
        except ValueError as error:
            parser.error(f"--{name.replace('_', '-')}: {error}")
    if args.prompts is not None:
        try:
            read_prompts_file(args.prompts)
        except (OSError, ValueError) as error:
            parser.error(str(error))
    return args


def load_prompts(args) -> tuple[list[tuple[str, str]], list[DataUnavailable]]:
    """(task, prompt) pairs, the user's file or `--num-prompts` per task, and the default tasks skipped
    for want of data. A task named in `--tasks` whose data is missing raises."""
    if args.prompts is not None:
        return read_prompts_file(args.prompts), []
    pairs, skipped = [], []
    for task in args.tasks or ALL_TASKS:
        if task in EXTRA_TASKS:
            shipped = read_prompts_file(PROMPTS_FILE, (task,))
            if args.tasks is not None and len(shipped) < args.num_prompts:
                raise ValueError(f"task {task!r}: {args.num_prompts} prompts asked for, ssd ships {len(shipped)}")
            pairs += shipped[: args.num_prompts]  # a default task: at most what ships
            continue
        try:
            pairs += [(task, p) for p in task_prompts(task, args.num_prompts, args.data_dir, args.max_words)]
        except DataUnavailable as missing:
            if args.tasks is not None:
                raise
            skipped.append(missing)
    return pairs, skipped


def skipped_line(skipped: list[DataUnavailable]) -> str:
    """One line: which default tasks had no data, why, and how to add them."""
    names = " and ".join(m.task.name for m in skipped)
    patterns = " and ".join(m.task.file_pattern for m in skipped)
    reasons = "; ".join(dict.fromkeys(m.reason for m in skipped))
    return f"skipped {names} ({reasons}). To add them, set ${DATA_DIR_ENV} or --data-dir to a folder holding {patterns}."


# --- the methods -------------------------------------------------------------


def hf_method(stock, max_new_tokens: int, **assisted) -> Method:
    """Stock greedy `generate`; with `assisted` arguments, one of its speculative decoders.

    It decodes past EOS as ours do, for a fixed token count: an empty list of
    EOS ids (None would take the model's; an id of -1 warns at every call;
    `min_new_tokens` masks EOS, which changes the output). The attention mask
    is given: without one, `generate` masks every prompt token equal to the pad
    id, and the embedded model's pad id is `<|im_end|>`, which a chat prompt holds.
    """
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=[],
                              pad_token_id=stock.generation_config.pad_token_id or 0, **assisted)

    def run(input_ids, task):
        with quiet_assistant_kwargs_notice():
            output = stock.generate(input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config)
        return Run(output[0, input_ids.shape[1] :].tolist())

    return run


# transformers' assisted decoders call `generate` with a config and keyword arguments together, and
# transformers then tells the caller that this is deprecated: a notice about its own code, not the bench's.
ASSISTANT_KWARGS_NOTICE = "Passing `generation_config` together with generation-related arguments"


def quiet_assistant_kwargs_notice():
    """Drop that one notice while stock `generate` runs; every other transformers message still shows."""
    return without_message("transformers.generation.utils", ASSISTANT_KWARGS_NOTICE)


def llama_cpp_method(name: str | None, max_new_tokens: int, context: int) -> Method:
    """llama.cpp's greedy decoding (`llama-cpp-python`) of the model's GGUF, prefill included, on torch's
    thread count, from the same token ids, exactly `max_new_tokens` tokens (no stop at EOS)."""
    llm = open_gguf(named_gguf(name), context)

    def run(input_ids, task):
        tokens = []
        for token in llm.generate(input_ids[0].tolist(), top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            tokens.append(token)
            if len(tokens) == max_new_tokens:
                break
        return Run(tokens)

    return run


def swift_method(model, max_new_tokens: int, cached: bool = False) -> Method:
    """SWIFT as the paper runs it: one optimiser per task stream, starting cold (no cache read or
    written); `cached`: from the set `skip_layers.json` stores for the model and task (read only: the
    stream writes to a copy), cold where there is none."""
    optimizers = {}
    copies = tempfile.TemporaryDirectory() if cached else None  # removed with `run`, which holds it

    def run(input_ids, task):
        if task not in optimizers:
            if cached:
                path = Path(copies.name) / f"{task}.json"
                shutil.copyfile(SKIP_LAYERS_PATH, path)
                optimizers[task] = SwiftOptimizer(model, SwiftConfig(), task=task, cache_hit=True, skip_layers_path=path)
            else:
                optimizers[task] = SwiftOptimizer(model, SwiftConfig())
        return generate_method(model, "swift", max_new_tokens, swift=optimizers[task])(input_ids, task)

    return run


def build_methods(args, model, also=None) -> dict[str, Method]:
    """The methods `args` names, on `model`, and again on `also` (the model in `--also-dtype`)."""
    methods = {}
    for suffix, model_ in [("", model)] + ([(f"@{dtype_name(also.dtype)}", also)] if also is not None else []):
        hf = {"hf": {}, "hf-pld": {"prompt_lookup_num_tokens": args.prompt_lookup_tokens},
              "hf-early-exit": {"assistant_early_exit": args.early_exit_layer or model_.num_layers // 2}}
        if any(name in args.methods for name in hf):
            stock = stock_twin(model_)
        for name in args.methods:
            if name in hf:
                methods[name + suffix] = hf_method(stock, args.max_new_tokens, **hf[name])
            elif name == "llama-cpp":
                if not suffix:  # its own dtypes: one run, not one per --also-dtype
                    context = min(model_.max_context, 4096)
                    methods[name] = llama_cpp_method(args.model, args.max_new_tokens, context)
            else:
                methods[name + suffix] = ours(model_, name, args.max_new_tokens)
    return methods


def ours(model, name: str, max_new_tokens: int) -> Method:
    """One of ssd's methods by its bench name."""
    if name == "sss":
        return generate_method(model, "sss", max_new_tokens, do_sample=True, top_k=0,
                          generator=torch.Generator(model.device).manual_seed(0))
    if name in ("swift", "swift-cached"):
        return swift_method(model, max_new_tokens, cached=name == "swift-cached")
    if name == "self-draft":
        return generate_method(model, "hybrid", max_new_tokens, ngram_size=0, gguf_draft=None)
    if name == "hybrid-no-gguf":
        return generate_method(model, "hybrid", max_new_tokens, gguf_draft=None)
    if name == "gguf-draft":  # the self-draft is the full model: the gate offers it not
        return generate_method(model, "hybrid", max_new_tokens, ngram_size=0, draft=Draft())
    if name == "hybrid-trees":
        return generate_method(model, "hybrid", max_new_tokens, lookup_ways=3, branches=2)
    return generate_method(model, name, max_new_tokens)


def describe(model) -> str:
    """The model's dtype and how its passes run."""
    return dtype_name(model.dtype) + (", compiled" if model.compiled else "") + (", packed weights" if model.weights_packed else "")


def load_with_draft(args, dtype: torch.dtype | None):
    """(model, tokenizer, description of its draft): the checkpoint with the draft `args` asks for."""
    placement = {"device_map": args.device_map} if args.device_map else {}
    model, tokenizer = load_model(args.model, dtype=dtype, device=args.device, compile=args.compile,
                                  pack_weights=args.pack_weights, **placement)
    draft = apply_draft(model, args.skip_layers_key, args.model)
    if args.draft_precision != "default":
        model.set_draft_precision(None if args.draft_precision == "none" else args.draft_precision)
        draft += f", set to {model.get_draft_precision() or 'full'} by --draft-precision"
    return model, tokenizer, draft


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Speedup over stock generate (or base) per method, one bar group per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "speedup_vs_hf" if rows[0].get("speedup_vs_hf") is not None else "speedup"
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(tasks) * len(methods) * 0.25, 4))
    for i, method in enumerate(methods):
        values = [next(r[key] for r in rows if r["task"] == t and r["method"] == method) for t in tasks]
        ax.bar([t + i * width for t in range(len(tasks))], values, width, label=method)
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_xticks([t + 0.4 - width / 2 for t in range(len(tasks))], tasks)
    ax.set_ylabel("speedup over " + ("HF generate" if key == "speedup_vs_hf" else "base"))
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp.png")
    fig.savefig(temporary, dpi=120)
    plt.close(fig)
    os.replace(temporary, path)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:  # a bad model argument, a missing draft entry and missing data fail in seconds, before any load
        if "llama-cpp" in args.methods:
            named_gguf(args.model)
        check_load_arguments(args.model, compile=args.compile, pack_weights=args.pack_weights, device_map=args.device_map)
        if args.device_map is None:
            parse_device(args.device)
        check_draft_key(args.skip_layers_key, args.model)
        texts, skipped = load_prompts(args)
    except (OSError, ValueError, TypeError, KeyError, DataUnavailable) as error:
        raise SystemExit(f"python -m ssd.tools.bench: error: {error.args[0] if isinstance(error, KeyError) else error}") from None
    if skipped:
        print(skipped_line(skipped))
    try:
        model, tokenizer, draft = load_with_draft(args, args.dtype)
        also = load_with_draft(args, args.also_dtype)[0] if args.also_dtype not in (None, model.dtype) else None
    except (OSError, ValueError, MemoryError) as error:  # a checkpoint not there or not readable, or too large
        raise SystemExit(f"python -m ssd.tools.bench: error: {error}") from None
    prompts = [(task, encode(tokenizer, task, p, model.device)) for task, p in texts]
    paper, draft_of_paper = [m for m in ("essg", "sss") if m in args.methods], None
    if paper:
        try:
            draft_of_paper = paper_draft(model)
        except KeyError as error:  # a model with no paper-kind skip set: the rest still runs
            print(f"skipped {', '.join(paper)}: {error.args[0]}")
            args.methods = [m for m in args.methods if m not in paper]
    methods = build_methods(args, model, also)
    warm_up = encode_inputs(WARM_UP, tokenizer, model.device)
    # Methods on the --also-dtype model: over their own base, not compared with ours for identity.
    baselines = {name: "base" + name[name.index("@"):] for name in methods if "@" in name}
    records = run_side_by_side(prompts, methods, warm_up, compared=[m for m in methods if m != "sss" and m not in baselines])
    rows = tabulate_speed(records, baselines, also_over="hf" if "hf" in methods else None)
    setting = (f"{args.model or 'embedded SmolLM2-135M-Instruct'}, {describe(model)}, {model.device}, "
               f"{torch.get_num_threads()} threads, {args.max_new_tokens} new tokens, draft: {draft}")
    if draft_of_paper is not None:
        setting += f", essg's draft: {draft_of_paper}"
    gguf = auto_gguf(model)
    setting += f", GGUF draft: llama.cpp on {gguf.name}" if gguf is not None else ", no GGUF draft"
    if also is not None:
        setting += f"; METHOD@{dtype_name(also.dtype)}: the model in {describe(also)}"
    print(f"\n{setting}\n")
    print(format_table(rows))
    write_json_atomic(args.output.with_suffix(".json"), {
        "setting": setting, "args": {k: str(v) for k, v in vars(args).items()},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": rows, "records": records,
        "skipped_tasks": [m.task.name for m in skipped],
    })
    plot(rows, args.output.with_suffix(".png"), setting)
    if skipped:
        print(f"\n{skipped_line(skipped)}")
    if model.device.type == "cpu" and not llama_cpp_installed():
        print(f"\n{GGUF_DRAFT_OFFER}")
    print(f"\nwrote {args.output.with_suffix('.json')} and {args.output.with_suffix('.png')}")
    return rows


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
