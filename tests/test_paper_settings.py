"""Every notebook's `PAPER_GPU` setting, checked on the CPU against a GPU's rules, with no model loaded: its
parameters exist, its skip_layers.json entries too, its draft precisions and methods run on a GPU that has
no low-bit kernel at all, and the settings it builds are valid."""

import ast
import json
from pathlib import Path

import pytest
import torch

import ssd
from ssd.core.searching import SearchConfig, runnable_precisions
from ssd.core.skip_layers import read_skip_layers
from ssd.fast.device import DeviceProfile
from ssd.loading.model import parse_dtype
from ssd.tools import evaluation as ev

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# The least a GPU offers: no low-bit kernel (ssd's int4 is CPU-only; int8 depends on the torch build).
BARE_GPU = DeviceProfile.cuda((8, 0), low_bit=())


def settings(notebook: str) -> tuple[set[str], dict]:
    """The names of the notebook's parameters (its `DEFAULTS = dict(...)`) and its `PAPER_GPU` values."""
    source = json.loads((NOTEBOOKS / f"{notebook}.ipynb").read_text())
    code = "\n".join("".join(cell["source"]) for cell in source["cells"] if cell["cell_type"] == "code")
    calls = {node.targets[0].id: node.value for node in ast.walk(ast.parse(code))
             if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
             and node.targets[0].id in ("DEFAULTS", "PAPER_GPU")}
    assert set(calls) == {"DEFAULTS", "PAPER_GPU"}, f"{notebook} needs DEFAULTS and PAPER_GPU dicts"
    names = {keyword.arg for keyword in calls["DEFAULTS"].keywords}
    paper = {keyword.arg: ast.literal_eval(keyword.value) for keyword in calls["PAPER_GPU"].keywords}
    return names, paper


@pytest.mark.parametrize("notebook", ["search", "swift", "evaluate_sum", "evaluate_code"])
def test_the_paper_setting_is_complete_and_runs_on_a_gpu(notebook):
    names, paper = settings(notebook)
    assert set(paper) <= names, f"PAPER_GPU sets parameters {sorted(set(paper) - names)} the notebook lacks"
    assert paper["device"] == "cuda" and "/" in paper["model"], "a GPU and a hub model"
    assert parse_dtype(paper["dtype"]) == BARE_GPU.dtype == torch.bfloat16
    entries = read_skip_layers()
    if "skip_layers_key" in paper:
        assert paper["skip_layers_key"] in entries
        assert entries[paper["skip_layers_key"]].get("draft_precision") is None  # the model's own weights
    for option in paper.get("draft_options", {}):
        assert option in ssd.DraftConfig.option_names()


def test_the_papers_search_runs_at_the_models_precision_on_any_gpu():
    _, paper = settings("search")
    precisions = tuple(paper["precisions"])
    assert runnable_precisions(precisions, BARE_GPU) == precisions == (None,)
    assert BARE_GPU.draft_precision(paper["scan_precision"]) is None
    SearchConfig(max_new_tokens=32, precisions=precisions)
    assert "output_key" not in paper and "overwrite" not in paper, \
        "the search writes under its own key (<model key>/search/<hash>), beside the published set, not over it"
    assert paper["objective"] == "tokens_per_second" and paper["n_iter"] == 1000


def test_the_default_search_setting_runs_on_a_gpu_too(caplog):
    """The CPU defaults ask for int8 and int4: on a GPU without them, the search keeps what runs, saying so."""
    assert runnable_precisions((None, "int8", "int4"), BARE_GPU) == (None,)
    assert runnable_precisions((None, "int8", "int4"), DeviceProfile.cuda(low_bit=("int8",))) == (None, "int8")
    assert "no kernel on cuda" in caplog.text
    with pytest.raises(ValueError, match="none of the draft precisions"):
        runnable_precisions(("int4",), BARE_GPU)


@pytest.mark.parametrize("notebook", ["evaluate_sum", "evaluate_code"])
def test_the_papers_evaluation_methods_exist(notebook):
    names, paper = settings(notebook)
    methods = ev.standard_methods(max_step_draft=12, samples=10, draft_options=paper.get("draft_options"))
    assert {m.generate_fn for m in methods} <= set(ssd.method_names())
    ev.GenerationSettings(max_new_tokens=paper["max_new_tokens"])
    assert paper["max_new_tokens"] == 512


def test_the_papers_swift_setting():
    _, paper = settings("swift")
    config = ssd.SwiftConfig(skip_ratio=paper["skip_ratio"], max_tolerance_iter=paper["max_tolerance_iter"],
                             max_opt_iter=paper["max_opt_iter"])
    assert config == ssd.SwiftConfig()  # the paper's own defaults
    assert paper["skip_layers_key"] in read_skip_layers()
