"""The Bayesian draft search: variable mapping, the predicted-speedup replay, resuming from a log."""

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
)
from ssd.core.self_draft import SelfDraftConfig


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


def test_search_logs_and_resumes(tmp_path):
    model = tiny_llama(max_position_embeddings=128)
    prompts = [torch.tensor([[1, 5, 9, 13, 2, 7]]), torch.tensor([[3, 4, 8]])]
    config = SearchConfig(max_new_tokens=8, draft=SelfDraftConfig(max_step_draft=3, auto_th_stop_draft=False))
    log = tmp_path / "search.jsonl"

    first = LayerSkippingSearching(model, None, prompts, config, log_path=log)
    probed = first.probe([], [])
    first.search(3)
    records = read_jsonl(log)
    assert len(records) == 4 and records[0]["attention"] == [] and records[0]["mlp"] == []
    assert records[0]["score"] == probed and first.best_score == max(r["score"] for r in records) >= probed
    assert all(r["draft_precision"] in config.precisions for r in records)
    assert set(first.costs) == set(config.precisions), "sub-layer costs measured at every precision"
    assert model.get_skip_layers() == ([], []) and model.get_draft_precision() is None, "the model's own draft is kept"

    resumed = LayerSkippingSearching(model, None, prompts, config, log_path=log)
    assert len(resumed.optimizer.res) == 4 and resumed.best_score == first.best_score
    resumed.search(2)
    assert len(read_jsonl(log)) == 6
    best = max(read_jsonl(log), key=lambda r: r["score"])
    assert resumed.get_solution() == (best["attention"], best["mlp"]), "the solution is the best logged draft"
    assert resumed.best_draft_precision == best["draft_precision"]
    with pytest.raises(ValueError, match="other variables; this is a 'predicted' search over 6 layers"):
        LayerSkippingSearching(tiny_llama(num_hidden_layers=6, max_position_embeddings=128), None, prompts, config, log_path=log)
    with pytest.raises(ValueError, match="other variables"):  # the same model, other precisions
        LayerSkippingSearching(model, None, prompts, SearchConfig(max_new_tokens=8, precisions=(None,)), log_path=log)
    with pytest.raises(ValueError, match="other variables"):  # as many precisions, in another order
        LayerSkippingSearching(model, None, prompts, SearchConfig(max_new_tokens=8, precisions=(None, "int4", "int8")),
                               log_path=log)


def test_wall_clock_objective_and_bad_arguments(tmp_path):
    model = tiny_llama(max_position_embeddings=128)
    prompts = [torch.tensor([[1, 5, 9, 13]])]
    config = SearchConfig(max_new_tokens=6, draft=SelfDraftConfig(max_step_draft=3, auto_th_stop_draft=False))
    search = LayerSkippingSearching(model, None, prompts, config, objective="tokens_per_second", log_path=tmp_path / "log.jsonl")
    score = search.probe([1], [2])
    (record,) = read_jsonl(tmp_path / "log.jsonl")
    assert (record["attention"], record["mlp"], record["score"]) == ([1], [2], score)
    with pytest.raises(ValueError, match=r"\[7\]"):
        search.probe([7], [])
    assert len(read_jsonl(tmp_path / "log.jsonl")) == 1, "a rejected probe logs nothing"
    with pytest.raises(ValueError, match="objective"):
        LayerSkippingSearching(model, None, prompts, config, objective="accuracy")
    with pytest.raises(ValueError, match="prompt"):
        LayerSkippingSearching(model, None, [], config)
