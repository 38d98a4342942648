"""The prompts the tools time, and how a prompt becomes token ids: as `ssd.generate` encodes it, so a
tool times what a user's call would run."""

from __future__ import annotations

from pathlib import Path

import torch

from ssd.core.files import read_jsonl
from ssd.generation import encode_inputs

PROMPTS_FILE = Path(__file__).with_name("bench_prompts.jsonl")  # QA, writing and chat prompts, by task
CHAT_TASKS = ("chat",)  # sent through the tokenizer's chat template, as a user of a chat model does
WARM_UP = "Warm up."  # what the harness runs before timing


def read_prompts_file(path: Path, tasks: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
    """(task, prompt) pairs from a JSONL file; a line without a task is task "prompts"."""
    if not path.is_file():
        raise FileNotFoundError(f"no prompts file at {path}")
    pairs = []
    for number, record in enumerate(read_jsonl(path), 1):
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
            raise ValueError(f'{path}, record {number} needs a non-empty string "prompt"')
        task = str(record.get("task", "prompts"))
        if tasks is None or task in tasks:
            pairs.append((task, record["prompt"]))
    if not pairs:
        raise ValueError(f"{path} holds no prompts" + (f" for tasks {list(tasks)}" if tasks else ""))
    return pairs


def encode(tokenizer, task: str, prompt: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """Token ids `[1, T]` on `device`; a chat task's prompt is a user message in the chat template."""
    return encode_inputs([{"role": "user", "content": prompt}] if task in CHAT_TASKS else prompt, tokenizer, device)
