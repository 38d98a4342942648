"""Base and self-speculative decoding side by side, for several skip sets, per task.

Each prompt runs base once and then essg with every skip set, so drift of a
shared machine lands on all of them alike; speedups are ratios of summed
times within one run.
"""

from __future__ import annotations

from collections import defaultdict

from tqdm.auto import tqdm

from ssd.inference import infer
from ssd.modeling_llama import LlamaForCausalLM
from ssd.searching import candidate_skip_layers


def compare_skip_sets(
    model: LlamaForCausalLM,
    tokenizer,
    prompts: dict[str, list[str]],
    skip_sets: dict[str, tuple[list[int], list[int]]],
    max_new_tokens: int = 128,
    **draft_kwargs,
) -> list[dict]:
    """One row per (skip set, task) and per skip set over all tasks ("all").

    Row fields: set, task, prompts, speedup (base time / essg time),
    tokens_per_second, base_tokens_per_second, matchness, drafted (tokens),
    identical (prompts whose essg output equals base's). Skip sets are compared
    on their own drafts: n-gram lookup is off unless `draft_kwargs` turn it on.
    """
    draft_kwargs = {"ngram_size": 0, **draft_kwargs}
    infer(model, tokenizer, "Warm up.", "essg", max_new_tokens=4)  # first-call costs out of the timings
    totals = defaultdict(lambda: defaultdict(float))
    jobs = [(task, prompt) for task, task_prompts in prompts.items() for prompt in task_prompts]
    for task, prompt in tqdm(jobs, desc="prompts"):
        base = infer(model, tokenizer, prompt, "base", max_new_tokens)
        for name, (attention, mlp) in skip_sets.items():
            with candidate_skip_layers(model, attention, mlp):
                essg = infer(model, tokenizer, prompt, "essg", max_new_tokens, **draft_kwargs)
            for key in ((name, task), (name, "all")):
                total = totals[key]
                total["prompts"] += 1
                total["tokens"] += len(essg["generate_ids"])
                total["time"] += essg["time"]
                total["base_time"] += base["time"]
                total["drafted"] += essg["num_drafted_tokens"]
                total["accepted"] += essg["matchness"] * essg["num_drafted_tokens"]
                total["identical"] += essg["generate_ids"] == base["generate_ids"]
    rows = []
    for (name, task), total in totals.items():
        rows.append({
            "set": name,
            "task": task,
            "prompts": int(total["prompts"]),
            "speedup": total["base_time"] / total["time"],
            "tokens_per_second": total["tokens"] / total["time"],
            "base_tokens_per_second": total["tokens"] / total["base_time"],
            "matchness": total["accepted"] / total["drafted"] if total["drafted"] else 0.0,
            "drafted": int(total["drafted"]),
            "identical": int(total["identical"]),
        })
    return rows

