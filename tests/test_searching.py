"""The Bayesian draft search: variable mapping, the predicted-speedup replay, one log per setting (resumed when
every setting that affects a score matches, a new one otherwise), and where its result is stored."""

import copy
import dataclasses
import shutil

import pytest
import torch
from helpers import tiny_llama

from ssd.core.files import read_jsonl
from ssd.core.searching import (
    LayerSkippingSearching,
    SearchConfig,
    params_to_precision,
    params_to_skip_layers,
    predicted_speedup,
    skip_layers_to_params,
    variable_names,
    weights_fingerprint,
)
from ssd.core.self_draft import SelfDraftConfig
from ssd.core.skip_layers import DEFAULT_PATH, hand_made_set, read_skip_layers
from ssd.loading.keys import model_key


def test_variable_mapping_for_any_depth():
    for num_layers in (4, 12, 30, 80):
        names = variable_names(num_layers)
        assert len(names) == 2 * num_layers and names == sorted(names), "bayes_opt orders variables by name"
        attention, mlp = [0, num_layers - 1], [1]
        params = skip_layers_to_params(attention, mlp, num_layers)
        assert params_to_skip_layers(params, num_layers) == (attention, mlp)
    # Threshold at 0.5, attention variables first.
    params = dict(zip(variable_names(3), [0.51, 0.5, 0.9, 0.0, 0.7, 0.2]))
    assert params_to_skip_layers(params, 3) == ([0, 2], [1])


def test_precision_variable():
    precisions = (None, "int8", "int4")
    names = variable_names(12, precisions)
    assert names[-1] == "precision" and names == sorted(names) and len(names) == 25
    assert variable_names(12, ("int8",)) == variable_names(12)  # one precision: no variable
    for precision in precisions:
        params = skip_layers_to_params([1], [2], 12, precision, precisions)
        assert params_to_precision(params, precisions) == precision and params_to_skip_layers(params, 12) == ([1], [2])
    # [0, 1] in equal thirds, 1.0 included in the last.
    assert [params_to_precision({"precision": v}, precisions) for v in (0.0, 0.33, 0.34, 0.66, 0.67, 1.0)] == [
        None, None, "int8", "int8", "int4", "int4"]
    with pytest.raises(ValueError, match="precisions"):
        SearchConfig(precisions=("int2",))


def test_predicted_speedup_replays_the_loop():
    draft = SelfDraftConfig(max_step_draft=4, th_stop_draft=0.5, auto_th_stop_draft=False)
    verify = (1.0, 1.0, 1.0, 1.0, 1.0)
    n = 20
    perfect = [torch.ones(n, dtype=torch.bool)], [torch.ones(n)]
    # Every draft right and free: 5 tokens per verification of cost 1.
    assert predicted_speedup(*perfect, draft, 0.0, verify) == 20 / 4
    useless = [torch.zeros(n, dtype=torch.bool)], [torch.ones(n)]
    # Every draft wrong: one token per step, 4 wasted drafts at 0.25 each plus the
    # verification; the last three steps draft only up to the end of the text.
    assert predicted_speedup(*useless, draft, 0.25, verify) == 20 / (17 * 2.0 + 1.75 + 1.5 + 1.25)
    # An unconfident draft stops after one token.
    unsure = [torch.zeros(n, dtype=torch.bool)], [torch.zeros(n)]
    assert predicted_speedup(*unsure, draft, 0.25, verify) == 20 / (20 * 1.25)


def evaluations(log) -> list[dict]:
    """A search log's evaluations: every line after the identity."""
    header, *records = read_jsonl(log)
    assert set(header) == {"identity"}
    return records


def test_search_logs_and_resumes(tmp_path):
    model = tiny_llama(max_position_embeddings=128)
    prompts = [torch.tensor([[1, 5, 9, 13, 2, 7]]), torch.tensor([[3, 4, 8]])]
    config = SearchConfig(max_new_tokens=8, draft=SelfDraftConfig(max_step_draft=3, auto_th_stop_draft=False))

    first = LayerSkippingSearching(model, None, prompts, config, log_dir=tmp_path)
    probed = first.probe([], [])
    first.search(3)
    records = evaluations(first.log_path)
    assert len(records) == 4 and records[0]["attention"] == [] and records[0]["mlp"] == []
    assert [r["kind"] for r in records] == ["probe"] + ["proposal"] * 3
    assert records[0]["score"] == probed and first.best_score == max(r["score"] for r in records) >= probed
    assert all(r["draft_precision"] in config.precisions for r in records)
    assert set(first.costs) == set(config.precisions), "sub-layer costs measured at every precision"
    assert model.get_skip_layers() == ([], []) and model.get_draft_precision() is None, "the model's own draft is kept"

    resumed = LayerSkippingSearching(model, None, prompts, config, log_dir=tmp_path)
    assert resumed.log_path == first.log_path and "resumed with 4 evaluations" in resumed.log_status
    assert len(resumed.optimizer.res) == 4 and resumed.best_score == first.best_score
    resumed.search(5)  # n_iter counts the log's proposals: two more
    assert len(evaluations(first.log_path)) == 6 and resumed.proposals == 5
    best = max(evaluations(first.log_path), key=lambda r: r["score"])
    assert resumed.get_solution() == (best["attention"], best["mlp"]), "the solution is the best logged draft"
    assert resumed.best_draft_precision == best["draft_precision"]

    # Another depth, other precisions, the same ones in another order, another dtype, other weights of the
    # same depth: each a new log, the old one untouched.
    logged = first.log_path.read_bytes()
    retrained = copy.deepcopy(model)
    retrained.model.layers[1].mlp.down_proj.weight.data.normal_()
    others = {
        "layers 6, not 4": (tiny_llama(num_hidden_layers=6, max_position_embeddings=128), config),
        "precisions [None], not": (model, dataclasses.replace(config, precisions=(None,))),
        "precisions [None, 'int4', 'int8']": (model, dataclasses.replace(config, precisions=(None, "int4", "int8"))),
        "dtype 'bfloat16', not 'float32'": (copy.deepcopy(model).to(torch.bfloat16), config),
        "weights": (retrained, config),
    }
    for difference, (other_model, other_config) in others.items():
        other = LayerSkippingSearching(other_model, None, prompts, other_config, log_dir=tmp_path)
        assert other.log_path != first.log_path and other.history == []
        assert "new;" in other.log_status and difference in other.log_status, other.log_status
    assert first.log_path.read_bytes() == logged


def test_weights_fingerprint_is_stable_and_tells_weights_apart(embedded):
    model, _ = embedded
    assert weights_fingerprint(model) == weights_fingerprint(model)
    assert weights_fingerprint(model) != weights_fingerprint(tiny_llama())


# --- the embedded model: one log per setting, continued by n_iter, the result under its own key -------

OBJECTIVE = "tokens_per_second"


@pytest.fixture(scope="module")
def setting(embedded, prompts):
    """The paper's kind of search (skip sets at the model's own weights, wall-clock objective), small: 6 tokens,
    one prompt. The wall-clock objective needs no preparation (the predicted one's full-model text and step
    costs take minutes on a loaded 2-core machine), and the log's rules are the same for both."""
    model, tokenizer = embedded
    config = SearchConfig(max_new_tokens=6, draft=SelfDraftConfig(max_step_draft=3, auto_th_stop_draft=False),
                          precisions=(None,))
    return model, tokenizer, prompts[:1], config, model_key(model.name_or_path)


def test_a_changed_setting_starts_a_new_log_and_the_same_resumes(setting, prompts, tmp_path):
    model, tokenizer, search_prompts, config, key = setting

    def searcher(prompts=search_prompts, config=config):
        return LayerSkippingSearching(model, tokenizer, prompts, config, OBJECTIVE, log_dir=tmp_path, model_key=key)

    first = searcher()
    assert first.log_status == f"search log {first.log_path}: new" and first.log_path.name.startswith(key)
    nothing_skipped = first.probe([], [])
    first.search(1)
    assert first.names == variable_names(model.num_layers), "one precision: skip sets only, no precision variable"
    before = evaluations(first.log_path)
    assert len(before) == 2
    logged = first.log_path.read_bytes()

    same = searcher()
    assert same.log_path == first.log_path and same.key == first.key == f"{key}/search/{first.identity_hash}"
    assert "resumed with 2 evaluations" in same.log_status and same.best_score == first.best_score
    assert same.probe([], []) == nothing_skipped, "a probe in the log is not evaluated again"
    assert "nothing to search" in same.search_plan(1)
    same.search(1)  # the same n_iter after completion: nothing
    assert first.log_path.read_bytes() == logged
    assert same.search_plan(2).startswith("1 proposals to make")
    same.search(2)  # a larger n_iter: one more proposal, appended to the same log
    records = evaluations(first.log_path)
    assert len(records) == 3 and records[:2] == before and same.proposals == 2
    logged = first.log_path.read_bytes()

    changed = {
        "max_new_tokens 5, not 6": dict(config=dataclasses.replace(config, max_new_tokens=5)),
        "draft.th_stop_draft 0.5, not 0.6": dict(config=dataclasses.replace(
            config, draft=dataclasses.replace(config.draft, th_stop_draft=0.5))),
        "prompts": dict(prompts=[search_prompts[0][: len(search_prompts[0]) // 2]]),  # fewer words
    }
    for difference, arguments in changed.items():
        other = searcher(**arguments)
        assert other.log_path != first.log_path and other.history == [] and other.key != first.key
        assert other.log_status == (f"search log {other.log_path}: new; {first.log_path} (kept as it is) "
                                    f"differs in {difference}")
    assert first.log_path.read_bytes() == logged, "the old log is untouched"


def test_the_result_goes_under_its_own_key_and_a_shipped_one_needs_overwrite(setting, tmp_path):
    model, tokenizer, search_prompts, config, key = setting
    search = LayerSkippingSearching(model, tokenizer, search_prompts, config, OBJECTIVE, log_dir=tmp_path, model_key=key)
    search.probe(*hand_made_set(model.num_layers))
    search.search(1)
    path = tmp_path / "skip_layers.json"
    shutil.copy(DEFAULT_PATH, path)
    shipped = read_skip_layers(path)
    assert key in shipped

    with pytest.raises(ValueError, match=f"already has an entry '{key}'; pass overwrite=True"):
        search.save(path, key)
    assert read_skip_layers(path) == shipped, "a refused save writes nothing"

    assert search.save(path, source="test") == search.key
    entry = read_skip_layers(path)[search.key]
    assert (entry["attention"], entry["mlp"]) == tuple(search.get_solution())
    assert entry["draft_precision"] is None and entry["search"] == search.identity_hash
    assert entry["max_new_tokens"] == 6 and entry["iterations"] == 2 and entry["source"] == "test"
    assert {k: v for k, v in read_skip_layers(path).items() if k != search.key} == shipped, "others kept"
    search.probe([], [])
    search.save(path)  # its own key: a continued search replaces it
    assert read_skip_layers(path)[search.key]["iterations"] == 3

    search.save(path, key, overwrite=True)
    assert read_skip_layers(path)[key]["search"] == search.identity_hash


def test_wall_clock_objective_and_bad_arguments(tmp_path):
    model = tiny_llama(max_position_embeddings=128)
    prompts = [torch.tensor([[1, 5, 9, 13]])]
    config = SearchConfig(max_new_tokens=6, draft=SelfDraftConfig(max_step_draft=3, auto_th_stop_draft=False))
    search = LayerSkippingSearching(model, None, prompts, config, objective="tokens_per_second", log_dir=tmp_path)
    score = search.probe([1], [2])
    (record,) = evaluations(search.log_path)
    assert (record["attention"], record["mlp"], record["score"]) == ([1], [2], score)
    with pytest.raises(ValueError, match=r"\[7\]"):
        search.probe([7], [])
    assert len(evaluations(search.log_path)) == 1, "a rejected probe logs nothing"
    with pytest.raises(ValueError, match="objective"):
        LayerSkippingSearching(model, None, prompts, config, objective="accuracy")
    with pytest.raises(ValueError, match="prompt"):
        LayerSkippingSearching(model, None, [], config)
