"""Bad input gets a clear error and changes nothing."""

import json

import pytest
import torch

import ssd
from helpers import tiny_llama
from ssd.data import load_examples, get_task
from ssd.decoding import DraftConfig


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
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_examples("cnndm", 3, data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown task"):
        get_task("squad")


def test_draft_config_validation():
    with pytest.raises(ValueError, match="max_step_draft"):
        DraftConfig(max_step_draft=0)
    with pytest.raises(ValueError, match="th_stop_draft"):
        DraftConfig(th_stop_draft=-0.1)
    with pytest.raises(ValueError, match="short_lookup"):
        DraftConfig(short_lookup=0)
