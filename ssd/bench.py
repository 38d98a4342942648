"""`python -m ssd.bench`: stock generate, base and essg on the same real prompts, in one run.

Methods alternate per prompt so that machine drift is shared; every speed is
tokens / second of the new tokens, timed around the generation only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, GenerationConfig

import ssd
from ssd.data import TASKS, task_prompts
from ssd.models import embedded_model_path
from ssd.evaluation import apply_draft


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ssd.bench", description=__doc__)
    parser.add_argument("--model", default=None, help="hub id or folder of a LLaMA checkpoint (default: embedded SmolLM2)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: the fastest on the device")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=["cnndm", "xsum", "humaneval"])
    parser.add_argument("--num-prompts", type=int, default=2, help="prompts per task")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-words", type=int, default=400, help="clip each article to this many words")
    parser.add_argument("--data-dir", default=None, help="folder of cnndm*.jsonl / xsum*.jsonl (or $SSD_DATA_DIR)")
    parser.add_argument("--attention", type=int, nargs="*", default=None, help="attention layers the draft skips")
    parser.add_argument("--mlp", type=int, nargs="*", default=None, help="MLP layers the draft skips")
    parser.add_argument("--th-stop-draft", type=float, default=0.6)
    parser.add_argument("--max-step-draft", type=int, default=12)
    args = parser.parse_args(argv)
    if args.num_prompts < 1 or args.max_new_tokens < 1:
        parser.error("--num-prompts and --max-new-tokens must be >= 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    return args


def stock_model(args, dtype):
    """The same checkpoint in stock transformers, for the `generate` reference."""
    if args.model is None:
        folder, name = embedded_model_path()
        return AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype).eval()
    return AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).eval()


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = ssd.load_model(args.model, dtype=DTYPES.get(args.dtype), device=args.device)
    stock = stock_model(args, model.dtype).to(model.device)
    if args.model is None:
        print(apply_draft(model, None))  # the searched set for the embedded model, else the hand-picked one
    attention, mlp = model.get_skip_layers()
    model.set_skip_layers(args.attention if args.attention is not None else attention, args.mlp if args.mlp is not None else mlp)
    prompts = [(task, p) for task in args.tasks for p in task_prompts(task, args.num_prompts, args.data_dir, args.max_words)]
    generation_config = GenerationConfig(
        max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens, do_sample=False,
        pad_token_id=tokenizer.eos_token_id,
    )
    draft = dict(th_stop_draft=args.th_stop_draft, max_step_draft=args.max_step_draft)

    ssd.infer(model, tokenizer, "Warm up.", "essg", max_new_tokens=4)  # first-call costs out of the timings
    rows = []
    for task, prompt in tqdm(prompts, desc="prompts"):
        input_ids = tokenizer(prompt, return_tensors="pt").input_ids.to(model.device)
        hf_time = _time_stock(stock, input_ids, generation_config)
        base = ssd.infer(model, tokenizer, input_ids, "base", args.max_new_tokens)
        essg = ssd.infer(model, tokenizer, input_ids, "essg", args.max_new_tokens, **draft)
        rows.append(
            dict(task=task, hf=hf_time, base=base["time"], essg=essg["time"], matchness=essg["matchness"],
                 identical=essg["generate_ids"] == base["generate_ids"],
                 tokens_per_verification=args.max_new_tokens / max(essg["num_verifications"], 1))
        )
    summary = summarise(rows, args.max_new_tokens)
    print_table(summary, args, model)
    return summary


def _time_stock(stock, input_ids, generation_config) -> float:
    if input_ids.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    stock.generate(input_ids, generation_config=generation_config)
    if input_ids.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def summarise(rows: list[dict], max_new_tokens: int) -> dict:
    """Per task and overall: tokens/s of each method (total tokens / total time) and speedups."""
    out = {}
    for task in [*dict.fromkeys(r["task"] for r in rows), "all"]:
        sel = [r for r in rows if task in ("all", r["task"])]
        tps = {m: max_new_tokens * len(sel) / sum(r[m] for r in sel) for m in ("hf", "base", "essg")}
        out[task] = dict(
            prompts=len(sel), **{f"{m}_tok_s": v for m, v in tps.items()},
            base_vs_hf=tps["base"] / tps["hf"], essg_vs_base=tps["essg"] / tps["base"], essg_vs_hf=tps["essg"] / tps["hf"],
            matchness=statistics.mean(r["matchness"] for r in sel),
            tokens_per_verification=statistics.mean(r["tokens_per_verification"] for r in sel),
            identical=all(r["identical"] for r in sel),
        )
    return out


def print_table(summary: dict, args, model) -> None:
    print(f"\nmodel {args.model or 'embedded SmolLM2-135M-Instruct'}, {model.dtype}, {model.device}, "
          f"{torch.get_num_threads()} threads, {args.max_new_tokens} new tokens, skip {model.get_skip_layers()}")
    header = f"{'task':<10} {'n':>3} {'HF tok/s':>9} {'base tok/s':>10} {'essg tok/s':>10} {'base/HF':>8} {'essg/base':>9} {'essg/HF':>8} {'matchness':>9} {'tok/verif':>9} {'identical':>9}"
    print(header)
    print("-" * len(header))
    for task, s in summary.items():
        print(f"{task:<10} {s['prompts']:>3} {s['hf_tok_s']:>9.1f} {s['base_tok_s']:>10.1f} {s['essg_tok_s']:>10.1f} "
              f"{s['base_vs_hf']:>8.2f} {s['essg_vs_base']:>9.2f} {s['essg_vs_hf']:>8.2f} {s['matchness']:>9.2f} "
              f"{s['tokens_per_verification']:>9.2f} {str(s['identical']):>9}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
