"""`python -m ssd.bench`: argument errors are clear, prompts files are read strictly, summaries add up."""

import json

import pytest

from ssd.bench import PROMPTS_FILE, parse_args, read_prompts_file


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num-prompts", "0"], "--num-prompts must be >= 1"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--early-exit-layer", "0"], "--early-exit-layer must be >= 1"),
        (["--tasks", "cnndm", "poetry"], "unknown tasks ['poetry']"),
        (["--methods", "base", "medusa"], "unknown methods ['medusa']"),
        (["--methods", "hf", "essg"], "must include base"),
        (["--dtype", "float8"], "dtype must be one of"),
        (["--prompts", "/nonexistent/prompts.jsonl"], "no prompts file at"),
    ],
)
def test_bad_arguments_exit_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"prompt": "fine"}\n{not json}\n', ":2 is not valid JSON"),
        ('{"task": "qa"}\n', 'needs a non-empty string "prompt"'),
        ('{"prompt": "  "}\n', 'needs a non-empty string "prompt"'),
        ("\n\n", "holds no prompts"),
    ],
)
def test_bad_prompts_file(tmp_path, capsys, content, message):
    path = tmp_path / "prompts.jsonl"
    path.write_text(content)
    with pytest.raises(SystemExit):
        parse_args(["--prompts", str(path)])
    assert message in capsys.readouterr().err


def test_prompts_file_tasks():
    qa = read_prompts_file(PROMPTS_FILE, ("qa",))
    writing = read_prompts_file(PROMPTS_FILE, ("writing",))
    assert qa and writing and {t for t, _ in qa} == {"qa"} and {t for t, _ in writing} == {"writing"}
    assert len(qa) + len(writing) == len(read_prompts_file(PROMPTS_FILE))


def test_user_prompts_default_task(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "Hello"}) + "\n" + json.dumps({"prompt": "Hi", "task": "greet"}) + "\n")
    assert read_prompts_file(path) == [("prompts", "Hello"), ("greet", "Hi")]
    assert parse_args(["--prompts", str(path)]).prompts == path


def test_compile_flag_defaults_to_load_models_choice():
    assert parse_args([]).compile is None
    assert parse_args(["--compile"]).compile is True
    assert parse_args(["--no-compile"]).compile is False
