"""Task data: loading from files, folders and the hub, the paper's prompts, clipping to a token budget, errors."""

import json

import pytest
from helpers import data_dir

from ssd.tools.data import (
    DATA_DIR_ENV,
    DataUnavailable,
    clip_summarization_prompt,
    code_prompt,
    get_task,
    load_examples,
    prompt_budget,
    summarization_prompt,
    task_examples,
    task_prompts,
)

SHOT = {"article": "The shot article has words.", "highlights": "First highlight .\nSecond highlight ."}
EXAMPLE = {"article": "The article to summarise.", "highlights": "Its summary ."}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# --- loading and its errors ----------------------------------------------------


def test_unknown_task_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown task 'cnn'.*cnndm.*humaneval.*xsum"):
        load_examples("cnn", 1)


def test_missing_folder_says_where_data_was_looked_for(tmp_path):
    folder = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=rf"{folder}.*from data_dir.*cnndm\*\.jsonl"):
        load_examples("cnndm", 1, data_dir=folder)


def test_folder_without_the_task_file_names_pattern_and_env(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "xsum_a.jsonl", [{"document": "d", "summary": "s"}])
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(DataUnavailable, match=rf"no cnndm\*\.jsonl in {tmp_path} \(from \${DATA_DIR_ENV}\)"):
        load_examples("cnndm", 1)
    assert load_examples("xsum", 1) == [{"document": "d", "summary": "s"}]  # the variable is used


def test_data_dir_argument_beats_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "absent"))
    write_jsonl(tmp_path / "cnndm_x.jsonl", [EXAMPLE])
    assert load_examples("cnndm", None, data_dir=tmp_path) == [EXAMPLE]


def test_data_files(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [SHOT, EXAMPLE])
    second = write_jsonl(tmp_path / "b.jsonl", [EXAMPLE])
    assert load_examples("cnndm", None, data_files=[first, second]) == [SHOT, EXAMPLE, EXAMPLE]
    assert load_examples("cnndm", 1, data_files=str(first)) == [SHOT]
    with pytest.raises(FileNotFoundError, match=r"no file .*missing\.jsonl \(from data_files"):
        load_examples("cnndm", 1, data_files=tmp_path / "missing.jsonl")


def test_rows_without_the_task_fields_are_refused(tmp_path):
    path = write_jsonl(tmp_path / "xsum.jsonl", [{"article": "a", "highlights": "h"}])
    with pytest.raises(ValueError, match=r"without field\(s\) \['document', 'summary'\]"):
        load_examples("xsum", 1, data_files=path)
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(ValueError, match="no rows"):
        load_examples("xsum", 1, data_files=empty)


def test_a_broken_line_is_named(tmp_path):
    path = tmp_path / "cnndm.jsonl"
    path.write_text(json.dumps(EXAMPLE) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"cnndm\.jsonl, line 2: not valid JSON"):
        load_examples("cnndm", None, data_files=path)


def test_bad_n():
    with pytest.raises(ValueError, match="n must be >= 1"):
        load_examples("humaneval", 0)


def test_hub_failure_points_at_offline_data(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataUnavailable, match=rf"could not load 'xsum' from the hub.*\${DATA_DIR_ENV}.*data_files"):
        load_examples("xsum", 1)


def test_humaneval_from_the_package_and_from_a_file(tmp_path):
    rows = load_examples("humaneval", 3)
    assert [r["task_id"] for r in rows] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    path = write_jsonl(tmp_path / "he.jsonl", rows[1:])
    assert load_examples("humaneval", None, data_files=path) == rows[1:]
    with pytest.raises(FileNotFoundError, match="no HumanEval file"):
        load_examples("humaneval", 1, data_files=tmp_path / "absent.jsonl")


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
    problem = load_examples("humaneval", 1)[0]
    assert code_prompt(tokenizer, problem) == problem["prompt"]
    with pytest.raises(ValueError, match=r"HumanEval/0 has \d+ prompt tokens, more than max_prompt_tokens=10"):
        code_prompt(tokenizer, problem, max_prompt_tokens=10)


def test_task_examples_and_task_prompts(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [SHOT, EXAMPLE, {**EXAMPLE, "id": "b"}])
    examples = task_examples("cnndm", 2, data_files=path)
    assert [e.id for e in examples] == ["0", "b"]
    assert examples[0].reference == "Its summary ." and examples[0].prompt.endswith("summarise.\nSummary:")
    code = task_examples("humaneval", 2)
    assert code[1].id == "HumanEval/1" and code[1].problem["entry_point"] == "separate_paren_groups"
    assert task_prompts("humaneval", 2) == [e.prompt for e in code]
    with pytest.raises(ValueError, match=r"1 examples need 2 rows \(the first is the 1-shot example\); the data has 1, so at most 0"):
        task_examples("cnndm", 1, data_files=write_jsonl(tmp_path / "one.jsonl", [SHOT]))
    with pytest.raises(ValueError, match="3 examples need 4 rows .* the data has 3, so at most 2 examples"):
        task_examples("cnndm", 3, data_files=path)
    with pytest.raises(ValueError, match="200 examples asked for, the data has 164"):
        task_examples("humaneval", 200)


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
    assert spec.source_field in load_examples(task, 1, data_dir())[0]
