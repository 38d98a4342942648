"""`python -m ssd.tools.bench`: argument errors are clear, prompts files are read strictly, summaries add up."""

import json
import logging

import pytest
import torch
from helpers import NEAR_TIE_FLOAT32, assert_same_tokens
from transformers import GenerationConfig

from ssd.loading.model import stock_twin
from ssd.tools import bench
from ssd.tools.bench import load_prompts, parse_args, skipped_line
from ssd.tools.data import DATA_DIR_ENV
from ssd.tools.prompts import PROMPTS_FILE, encode, read_prompts_file


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
        (["--dtype", "float8"], "--dtype: dtype must be one of"),
        (["--also-dtype", "float8"], "--also-dtype: dtype must be one of"),
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
        ('{"prompt": "fine"}\n{not json}\n', "line 2: not valid JSON"),
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
    by_task = {task: read_prompts_file(PROMPTS_FILE, (task,)) for task in ("qa", "writing", "chat")}
    assert all(pairs and {t for t, _ in pairs} == {task} for task, pairs in by_task.items())
    assert sum(map(len, by_task.values())) == len(read_prompts_file(PROMPTS_FILE))
    assert len(by_task["chat"]) >= 8  # writing, coding, QA, maths, translation, reasoning, summary, passage


def test_chat_prompts_go_through_the_chat_template(tokenizer):
    prompt = read_prompts_file(PROMPTS_FILE, ("chat",))[0][1]
    messages = [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.endswith("assistant\n") and prompt in text
    expected = tokenizer(text, add_special_tokens=False).input_ids
    assert encode(tokenizer, "chat", prompt)[0].tolist() == expected
    assert encode(tokenizer, "qa", prompt)[0].tolist() == tokenizer(prompt).input_ids


def test_stock_generate_on_a_chat_prompt_equals_base(embedded, stock, base_tokens):
    """A chat prompt holds `<|im_end|>`, the embedded model's pad id: the stock method must not mask it
    as padding (it did, and parted from base at the 17th token of this prompt)."""
    from ssd.tools.bench import hf_method

    model, tokenizer = embedded
    input_ids = encode(tokenizer, "chat", read_prompts_file(PROMPTS_FILE, ("chat",))[1][1])
    assert (input_ids == stock.generation_config.pad_token_id).any()
    expected = base_tokens(input_ids, 20)
    assert_same_tokens(expected, hf_method(stock, 20)(input_ids, "chat").tokens, model, input_ids, NEAR_TIE_FLOAT32, "hf")


def test_user_prompts_default_task(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "Hello"}) + "\n" + json.dumps({"prompt": "Hi", "task": "greet"}) + "\n")
    assert read_prompts_file(path) == [("prompts", "Hello"), ("greet", "Hi")]
    assert parse_args(["--prompts", str(path)]).prompts == path


def test_compile_flag_defaults_to_load_models_choice():
    assert parse_args([]).compile is None
    assert parse_args(["--compile"]).compile is True
    assert parse_args(["--no-compile"]).compile is False


def test_stock_generate_runs_quietly_for_a_fixed_length(stock):
    """A fixed token count without transformers' notices: no EOS id of -1 (warned at every call), and
    the assisted decoder's own config-plus-kwargs notice dropped; the same call unfiltered does warn."""
    from transformers.utils import logging as hf_logging

    from ssd.tools.bench import ASSISTANT_KWARGS_NOTICE, hf_method

    class Recorder(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    recorder = Recorder()
    logger = logging.getLogger("transformers.generation.utils")
    logger.addHandler(recorder)
    try:
        input_ids = torch.tensor([[1, 504, 3575, 282]])
        hf_logging.warning_once.cache_clear()
        run = hf_method(stock, 6, assistant_early_exit=15)(input_ids, "t")
        plain = hf_method(stock, 6)(input_ids, "t")
        quiet = list(recorder.messages)
        hf_logging.warning_once.cache_clear()
        config = GenerationConfig(max_new_tokens=6, do_sample=False, eos_token_id=[], assistant_early_exit=15)
        stock.generate(input_ids, generation_config=config)
    finally:
        logger.removeHandler(recorder)
    assert len(run.tokens) == len(plain.tokens) == 6 and run.tokens == plain.tokens
    assert quiet == [] and any(m.startswith(ASSISTANT_KWARGS_NOTICE) for m in recorder.messages)


def test_stock_generate_runs_on_our_own_weights(embedded, stock):
    """`hf` and `hf-pld` run stock transformers' model on ssd's own weight tensors (no second copy: a 13B
    model loaded twice does not fit one GPU), and it generates what the model stock `from_pretrained`
    loads generates."""
    from ssd.tools.bench import hf_method

    model, tokenizer = embedded
    twin = stock_twin(model)
    ours = {p.data_ptr() for p in model.parameters()}
    assert type(twin) is type(stock) and all(p.data_ptr() in ours for p in twin.parameters())
    input_ids = encode(tokenizer, "chat", read_prompts_file(PROMPTS_FILE, ("chat",))[1][1])
    assert hf_method(twin, 20)(input_ids, "chat").tokens == hf_method(stock, 20)(input_ids, "chat").tokens
    assert parse_args(["--device-map", "auto"]).device_map == "auto"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No data folder, the hub offline and empty hub caches, as on a fresh clone without network."""
    import datasets
    import huggingface_hub

    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_default_tasks_without_data_skip_the_summaries_and_say_how_to_add_them(offline):
    pairs, skipped = load_prompts(parse_args(["--num-prompts", "1"]))
    assert [task for task, _ in pairs] == ["humaneval", "qa", "writing", "chat"]
    assert [m.task.name for m in skipped] == ["cnndm", "xsum"]
    line = skipped_line(skipped)
    assert line.startswith("skipped cnndm and xsum (could not load 'cnndm' from the hub") and "\n" not in line
    assert f"set ${DATA_DIR_ENV} or --data-dir to a folder holding cnndm*.jsonl and xsum*.jsonl" in line


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "cnndm"], r"error: could not load 'cnndm' from the hub \(abisee/cnn_dailymail, config 3.0.0, split test\).*Set \$SSD_DATA_DIR"),
    (["--device", "tpu"], "error: device must be a torch device such as 'cpu'.*got 'tpu'"),
    (["--model", "/nonexistent/model"], "error: no checkpoint folder at /nonexistent/model"),
    (["--tasks", "chat", "--num-prompts", "99"], "error: task 'chat': 99 prompts asked for, ssd ships 10"),
    (["--skip-layers-key", "nope"], "error: no entry 'nope' in .*skip_layers.json"),
    (["--model", "some/hub-model"], "error: name the skip_layers.json entry for some/hub-model"),
])
def test_what_is_missing_exits_with_a_message_before_the_model_loads(offline, monkeypatch, argv, message):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(bench, "load_model", no_loading)
    with pytest.raises(SystemExit, match=message):
        bench.main(argv + ["--methods", "base"])


def test_default_methods_and_full(monkeypatch):
    assert parse_args([]).methods == list(bench.DEFAULT_METHODS)
    monkeypatch.setattr(bench, "llama_cpp_installed", lambda: False)  # the optional peer: see below
    assert parse_args(["--full"]).methods == [m for m in bench.bench_methods() if m != "llama-cpp"]
    assert {"hf-early-exit", "swift"} <= set(bench.bench_methods()) - set(bench.DEFAULT_METHODS)
    with pytest.raises(SystemExit):
        parse_args(["--full", "--methods", "base"])


def test_the_llama_cpp_peer_is_optional(capsys, monkeypatch):
    """`llama-cpp` needs the `llama` extra: without it, asking for it is a clear error and `--full` leaves it
    out; with it, `--full` includes it. A model with no GGUF is refused before any load."""
    monkeypatch.setattr(bench, "llama_cpp_installed", lambda: False)
    with pytest.raises(SystemExit):
        parse_args(["--methods", "base", "llama-cpp"])
    assert 'pip install -e ".[llama]"' in capsys.readouterr().err
    assert "llama-cpp" not in parse_args(["--full"]).methods
    monkeypatch.setattr(bench, "llama_cpp_installed", lambda: True)
    assert "llama-cpp" in parse_args(["--full"]).methods
    with pytest.raises(SystemExit, match="no GGUF known"):
        bench.main(["--model", "/nonexistent/checkpoint", "--methods", "base", "llama-cpp"])
