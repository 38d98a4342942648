"""Bad input gets a clear error and changes nothing."""

import dataclasses
import json

import pytest
import torch
from helpers import tiny_llama

import ssd
import ssd.tools.notebook
from ssd.methods.hybrid import DraftConfig
from ssd.tools.data import DataUnavailable, get_task, load_task_data


@pytest.mark.parametrize(
    "attention, mlp, bad",
    [([30], [], "[30]"), ([-1], [], "[-1]"), ([], [3, 99], "[99]"), (["3"], [], "['3']"), ([True], [], "[True]")],
)
def test_invalid_skip_layers_name_them(embedded, attention, mlp, bad):
    model, _ = embedded
    model.set_skip_layers([1], [2])
    with pytest.raises(ValueError, match=bad.replace("[", r"\[").replace("]", r"\]")):
        model.set_skip_layers(attention, mlp)
    assert model.get_skip_layers() == ([1], [2]), "a rejected call must leave the skip sets as they were"


def test_skip_layers_accept_numpy_and_keywords():
    numpy = pytest.importorskip("numpy")
    model = tiny_llama()
    model.set_skip_layers(mlp=[numpy.int64(3)], attention=numpy.array([2, 1]))
    assert model.get_skip_layers() == ([1, 2], [3])


def test_default_drafts_live_on_the_instance():
    a, b = tiny_llama(), tiny_llama()
    a.set_skip_layers([0, 1], [2])
    assert a.default_draft == ssd.Draft(frozenset({0, 1}), frozenset({2}))
    assert b.default_draft == ssd.Draft() and b.get_skip_layers() == ([], [])


def test_a_draft_pass_skips_its_sub_layers_and_leaves_the_model_as_it_was():
    model = tiny_llama()
    ids = torch.tensor([[1, 2, 3, 4]])
    full = model(ids, model.new_cache(8), 0)
    assert torch.equal(model(ids, model.new_cache(8), 0, draft=ssd.Draft()), full), "an empty draft is the full model"
    drafted = model(ids, model.new_cache(8), 0, draft=ssd.Draft.skipping([1, 2], [0, 3]))
    assert not torch.allclose(drafted, full)
    assert torch.equal(model(ids, model.new_cache(8), 0), full), "draft=None runs the full model"
    model.set_skip_layers([1, 2], [0, 3])
    assert torch.equal(model(ids, model.new_cache(8), 0), full), "no pass reads the default draft"


def test_drafts_are_hashable_values_that_check_their_layers():
    draft = ssd.Draft.skipping([3, 1, 1], [2], "int4")
    assert draft == ssd.Draft(frozenset({1, 3}), frozenset({2}), "int4") and len({draft, ssd.Draft.skipping([1, 3], [2], "int4")}) == 1
    assert draft.skip_layers == ([1, 3], [2]) and not draft.is_full_model and ssd.Draft().is_full_model
    with pytest.raises(ValueError, match="unknown draft precision 'int3'"):
        ssd.Draft(precision="int3")
    with pytest.raises(ValueError, match=r"mlp skip layers \[5\] are not layer indices of a 4-layer model"):
        ssd.Draft.skipping([1], [5]).check(4)
    with pytest.raises(ValueError, match="collection of layer indices"):
        ssd.Draft(attention=3)


@pytest.mark.parametrize(
    "prompt, kwargs, message",
    [
        ("", {}, "empty"),
        (torch.zeros((1, 0), dtype=torch.long), {}, "empty"),
        ("Hello", {"max_new_tokens": 0}, "max_new_tokens"),
        ("Hello", {"max_new_tokens": 9000}, "exceeds the model's context"),
        ("Hello", {"generate_fn": "greedy"}, "generate_fn"),
        ("Hello", {"generate_fn": "essg", "do_sample": True}, "greedy"),
        ("Hello", {"generate_fn": "base", "th_stop_draft": 0.5}, "does not draft"),
        ("Hello", {"generate_fn": "essg", "th_stop_draft": 1.5}, "th_stop_draft"),
        ("Hello", {"generate_fn": "essg", "max_step_draft": 0}, "max_step_draft"),
        ("Hello", {"generate_fn": "sss", "temperature": 0.0}, "temperature"),
    ],
)
def test_bad_generation_input(embedded, prompt, kwargs, message):
    model, tokenizer = embedded
    with pytest.raises(ValueError, match=message):
        ssd.infer(model, tokenizer, prompt, **kwargs)


@pytest.mark.parametrize("bad_id", [10**7, 49152, -1])
def test_out_of_vocabulary_prompt_ids_are_refused_as_the_prompt(embedded, bad_id):
    """Named as the prompt's fault, before any pass runs, by every method."""
    model, _ = embedded
    for method in ("base", "essg", "sss", "swift"):
        with pytest.raises(ValueError, match=rf"token ids outside the vocabulary \(0..49151\): \[{bad_id}\]"):
            ssd.generate(model, torch.tensor([[1, 2, bad_id]]), method=method, max_new_tokens=4,
                         do_sample=method == "sss")


def test_over_long_prompt(embedded):
    model, tokenizer = embedded
    too_long = torch.ones((1, model.max_context), dtype=torch.long)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        ssd.infer(model, tokenizer, too_long, max_new_tokens=1)


def test_non_llama_checkpoint_is_refused(tmp_path):
    config = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 64}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="'gpt2' checkpoint"):
        ssd.load_model(tmp_path)


def test_missing_data_file_and_unknown_task(tmp_path):
    with pytest.raises(DataUnavailable, match=str(tmp_path)):
        load_task_data("cnndm", data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown task"):
        get_task("squad")


def test_draft_config_validation():
    with pytest.raises(ValueError, match="max_step_draft"):
        DraftConfig.of(max_step_draft=0)
    with pytest.raises(ValueError, match="th_stop_draft"):
        DraftConfig.of(th_stop_draft=-0.1)
    with pytest.raises(ValueError, match="short_lookup"):
        DraftConfig.of(short_lookup=0)
    for options in (dict(branches=-1), dict(branches=1.5), dict(lookup_ways=0), dict(lookup_ways=True),
                    dict(exit_margin=-0.5), dict(exit_margin=float("nan"))):
        with pytest.raises(ValueError, match=next(iter(options))):
            DraftConfig.of(**options)


def test_draft_settings_go_to_their_owners():
    """`DraftConfig.of` gives each setting, by its own name, to the part that owns it, and refuses a name
    no part has, naming the settings there are."""
    config = DraftConfig.of(max_step_draft=4, ngram_size=0, branches=2, gate=False)
    assert (config.self_draft.max_step_draft, config.lookup.ngram_size, config.trees.branches, config.gate) == (4, 0, 2, False)
    assert config.replace(short_lookup=None).lookup == dataclasses.replace(config.lookup, short_lookup=None)
    with pytest.raises(ValueError, match="unknown draft settings \\['ngram'\\].*ngram_size"):
        DraftConfig.of(ngram=2)


# --- load_model: every argument checked before anything is read -------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"name_or_path": "/nonexistent/checkpoint"}, FileNotFoundError, "no checkpoint folder at /nonexistent/checkpoint"),
        ({"name_or_path": 123}, TypeError, "name_or_path must be a hub id, a folder or None.*got 123"),
        ({"dtype": "float8"}, ValueError, r"dtype must be one of \['bfloat16', 'float16', 'float32'\].*'float8'"),
        ({"dtype": torch.int32}, ValueError, "dtype must be one of.*torch.int32"),
        ({"device": "tpu"}, ValueError, "device must be a torch device such as 'cpu'.*got 'tpu'"),
        ({"device_map": "everywhere"}, ValueError, "device_map must be a dict, one of .'auto'.*'everywhere'"),
        ({"draft_precision": "int3"}, ValueError, r"unknown draft precision 'int3'; choose from \('int8', 'int4'\) or None"),
        ({"compile": "yes"}, TypeError, "compile must be True, False or None.*'yes'"),
        ({"pack_weights": 1}, TypeError, "pack_weights must be True, False or None.*got 1"),
    ],
)
def test_load_model_refuses_bad_arguments_before_reading_anything(kwargs, error, message, monkeypatch):
    def no_reading(*args, **kwargs):
        raise AssertionError("a checkpoint was read before the arguments were checked")

    monkeypatch.setattr(ssd.loading.model.AutoConfig, "from_pretrained", no_reading)
    monkeypatch.setattr(ssd.loading.model, "resolve_checkpoint", no_reading)
    with pytest.raises(error, match=message):
        ssd.load_model(**kwargs)


def test_load_model_refuses_a_file_as_a_checkpoint_folder(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_text("")
    with pytest.raises(FileNotFoundError, match=r"no checkpoint folder at .*model.safetensors \(it is a file\)"):
        ssd.load_model(path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_load_model_refuses_cuda_on_a_machine_without_it():
    with pytest.raises(ValueError, match="device 'cuda:1': this machine has no CUDA GPU"):
        ssd.load_model(device="cuda:1")


# --- generate and infer ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "inputs, kwargs, error, message",
    [
        (None, {}, ValueError, "inputs must be a prompt string, a chat .* or token ids, got NoneType"),
        ("Hello", {"max_new_tokens": -1}, ValueError, "max_new_tokens must be an integer >= 1, got -1"),
        ("Hello", {"max_new_tokens": "10"}, ValueError, "max_new_tokens must be an integer >= 1, got '10'"),
        ("Hello", {"eos_token_id": 10**7}, ValueError, r"eos_token_id \[10000000\] outside the vocabulary \(0..49151\)"),
        ("Hello", {"do_sample": True, "generator": 0}, TypeError, "generator must be a torch.Generator or None, got 0"),
        ("Hello", {"draft": ssd.Draft.skipping([99])}, ValueError, r"attention skip layers \[99\] are not layer indices of a 30-layer"),
    ],
)
def test_bad_generate_input_is_named(embedded, inputs, kwargs, error, message):
    model, _ = embedded
    with pytest.raises(error, match=message):
        ssd.generate(model, inputs, **{"max_new_tokens": 4, **kwargs})


def test_infer_checks_its_own_arguments():
    model = tiny_llama()  # built here, so it has no tokenizer
    with pytest.raises(ValueError, match="infer decodes the completion with a tokenizer"):
        ssd.infer(model, None, torch.tensor([[1, 2]]))
    model.tokenizer = object()
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 1, got 0.5"):
        ssd.infer(model, None, torch.tensor([[1, 2]]), max_new_tokens=0.5)


@pytest.mark.parametrize("call, error, message", [
    (lambda m: m.set_skip_layers(None, None), ValueError, "attention skip layers must be a collection of layer indices, got None"),
    (lambda m: m.set_skip_layers("3"), ValueError, "attention skip layers must be a collection of layer indices, got '3'"),
    (lambda m: m.set_draft(([1], [2])), TypeError, r"a draft must be an ssd.Draft .*got \(\[1\], \[2\]\)"),
    (lambda m: m.set_draft_precision(4), ValueError, r"unknown draft precision 4; choose from \('int8', 'int4'\) or None"),
])
def test_bad_draft_settings_leave_the_draft_as_it_was(call, error, message):
    model = tiny_llama()
    model.set_skip_layers([1], [2])
    with pytest.raises(error, match=message):
        call(model)
    assert model.default_draft == ssd.Draft.skipping([1], [2])


# --- notebook parameter overrides --------------------------------------------------------------------


@pytest.mark.parametrize("overrides, error, message", [
    ('{"evaluate_sum": {"n_samples": "2"}}', ValueError, r"sets evaluate_sum's n_samples to '2' \(str\); its default is 8 \(int"),
    ('{"evaluate_sum": {"n_samples": true}}', ValueError, "n_samples to True"),
    ('{"evaluate_sum": {"n_samples": 2.5}}', ValueError, "n_samples to 2.5"),
    ('{"evaluate_sum": {"n_sample": 2}}', ValueError, r"sets \['n_sample'\] for 'evaluate_sum', which has parameters"),
    ('{"evaluate_sum": [1]}', ValueError, "must map notebook names to objects of parameters"),
    ("[1]", ValueError, "must map notebook names to objects of parameters"),
    ("{nope", ValueError, "is not valid JSON"),
    ("/nonexistent/params.json", FileNotFoundError, "neither JSON nor a file: /nonexistent/params.json"),
])
def test_bad_notebook_overrides_fail_before_any_cell_runs(monkeypatch, overrides, error, message):
    monkeypatch.setenv(ssd.tools.notebook.ENV, overrides)
    with pytest.raises(error, match=message):
        ssd.tools.notebook.parameters("evaluate_sum", n_samples=8, thresholds=[0.6], model=None)


def test_notebook_overrides_of_the_right_kind_apply(monkeypatch):
    monkeypatch.setenv(ssd.tools.notebook.ENV, '{"evaluate_sum": {"n_samples": 2, "thresholds": [], "model": "x", "rate": 1}}')
    params = ssd.tools.notebook.parameters("evaluate_sum", n_samples=8, thresholds=[0.6], model=None, rate=0.5)
    assert (params.n_samples, params.thresholds, params.model, params.rate) == (2, [], "x", 1)
