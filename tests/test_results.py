"""ssd.tools.results: result files written an example at a time, resumed after an interruption, named by their setup.

The real embedded model, 6 new tokens, 2 examples; an interruption is a KeyboardInterrupt raised from the
tokenizer's decode, which `generate_all` calls once per generation (warm-ups included). The drafting method
runs without the gate, which decides from wall time: then a generation's every figure, not only its tokens,
is the same in every run, and the adaptive threshold it carries from one example to the next shows whether a
resumed run started from the right one.
"""

import json
import re
import subprocess

import pytest
import torch

from ssd.core.files import read_jsonl
from ssd.core.skip_layers import hand_made_set
from ssd.tools import evaluation as ev
from ssd.tools import results as rs
from ssd.tools.data import Example

EXAMPLES = [
    Example("cnndm", "a", "Article: Heavy rain flooded the main road on Tuesday, and the police closed it.\nSummary:", "Rain."),
    Example("cnndm", "b", "Article: The school opened a new library with ten thousand books.\nSummary:", "Library."),
]
METHODS = [ev.Method("base"), ev.Method("essg adaptive", "essg", adaptive=True, draft_options={"gate": False}),
           ev.Method("base sample", do_sample=True, samples=2, baseline="base sample")]
PER_EXAMPLE = sum(m.samples for m in METHODS)  # 4 generations
SETTINGS = ev.GenerationSettings(6, early_stop=False)
PARAMETERS = dict(model=None, task="cnndm", max_new_tokens=6, dtype=None, device=None, compile=None, results_dir=None)


class Tokenizer:
    """The real tokenizer, counting decodes (one per generation) and raising KeyboardInterrupt at decode
    number `interrupt_at`, as Ctrl-C during a generation would."""

    def __init__(self, tokenizer, interrupt_at: int | None = None):
        self.tokenizer, self.interrupt_at, self.decodes = tokenizer, interrupt_at, 0

    def decode(self, *args, **kwargs):
        self.decodes += 1
        if self.decodes == self.interrupt_at:
            raise KeyboardInterrupt
        return self.tokenizer.decode(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        return self.tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


@pytest.fixture(scope="module")
def model(embedded):
    model, _ = embedded
    model.set_skip_layers(*hand_made_set(model.num_layers))
    return model


def generate(model, tokenizer, folder, interrupt_at=None, parameters=PARAMETERS):
    """`generate_all` into `folder`'s result file: (records, generations run, the file)."""
    counting = Tokenizer(tokenizer, interrupt_at)
    results = ev.results_file(folder, "evaluate_sum", parameters, model, EXAMPLES, METHODS, SETTINGS)
    records = ev.generate_all(model, counting, EXAMPLES, METHODS, SETTINGS, progress=False, results=results)
    return records, counting.decodes, results


def untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


@pytest.fixture(scope="module")
def uninterrupted(model, embedded, tmp_path_factory):
    records, decodes, results = generate(model, embedded[1], tmp_path_factory.mktemp("uninterrupted"))
    assert decodes == len(METHODS) + len(EXAMPLES) * PER_EXAMPLE  # a warm-up per method, then every generation
    return records, results


def test_records_are_appended_an_example_at_a_time_with_their_provenance(model, uninterrupted):
    records, results = uninterrupted
    assert len(records) == len(EXAMPLES) * PER_EXAMPLE and records == results.read().records
    assert [r["example_id"] for r in records[::PER_EXAMPLE]] == ["a", "b"]
    assert [r["prompt"] for r in records[::PER_EXAMPLE]] == [0, 1]
    lines = read_jsonl(results.path)
    assert [next(iter(line)) for line in lines] == ["header", "run", "example", "example"]
    assert [line["run"] for line in lines[2:]] == [0, 0]
    setup = lines[0]["header"]["setup"]
    # dtype, device and compile as loaded (the parameters said None), and the draft that ran.
    assert {k: setup["parameters"][k] for k in ("dtype", "device", "compile")} == dict(dtype="float32", device="cpu",
                                                                                      compile=model.compiled)
    assert "results_dir" not in setup["parameters"] and setup["settings"]["max_new_tokens"] == 6
    assert setup["draft"]["attention"] == hand_made_set(model.num_layers)[0] and setup["examples"]["n"] == 2
    run = lines[1]["run"]
    head = subprocess.run(["git", "-C", str(rs.REPOSITORY), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert run["commit"] == head.stdout.strip() and isinstance(run["dirty"], bool)
    assert run["cpu"] and run["device"] == "cpu" and run["dtype"] == "float32" and run["torch"] == torch.__version__
    assert re.fullmatch(r"evaluate_sum_cnndm_smollm2-135m-instruct_n2_[0-9a-f]{12}\.jsonl", results.path.name)
    assert results.path.name.endswith(f"_{rs.setup_key(setup)}.jsonl")


def test_an_interrupted_run_resumes_where_it_stopped(model, embedded, uninterrupted, tmp_path):
    tokenizer = embedded[1]
    expected, _ = uninterrupted
    # Ctrl-C during example b's third generation: example a is on disk, b is not.
    with pytest.raises(KeyboardInterrupt):
        generate(model, tokenizer, tmp_path, interrupt_at=len(METHODS) + PER_EXAMPLE + 3)
    (results_path,) = tmp_path.glob("*.jsonl")
    assert list(rs.read_results(results_path).examples) == ["a"]

    records, decodes, results = generate(model, tokenizer, tmp_path)
    assert decodes == len(METHODS) + PER_EXAMPLE, "only example b ran again (after the warm-ups)"
    # The same records as a run never interrupted: tokens, drafting figures, the adaptive threshold carried over.
    assert untimed(records) == untimed(expected)
    found = results.read()
    assert len(found.runs) == 2 and [line["run"] for line in read_jsonl(results.path)[2:] if "example" in line] == [0, 1]

    records, decodes, _ = generate(model, tokenizer, tmp_path)
    assert decodes == 0 and untimed(records) == untimed(expected), "all there: nothing runs, not even a warm-up"
    assert len(results.read().runs) == 2, "a run that wrote nothing adds no run line"


def test_a_torn_last_line_is_generated_again(model, embedded, uninterrupted, tmp_path):
    expected, done = uninterrupted
    path = tmp_path / done.path.name
    text = done.path.read_text()
    path.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2])  # killed while writing example b
    assert list(rs.read_results(path).examples) == ["a"]
    records, decodes, results = generate(model, embedded[1], tmp_path)
    assert results.path == path and decodes == len(METHODS) + PER_EXAMPLE
    assert untimed(records) == untimed(expected)
    assert [next(iter(line)) for line in read_jsonl(path)] == ["header", "run", "example", "run", "example"]


def test_another_setup_writes_another_file(model, tmp_path):
    def name(parameters=PARAMETERS, settings=SETTINGS, methods=METHODS, examples=EXAMPLES, folder=tmp_path):
        return ev.results_file(folder, "evaluate_sum", parameters, model, examples, methods, settings).path

    base = name()
    assert name() == base
    # Where files are, and a None that loads what was named, are the same setup.
    assert name({**PARAMETERS, "results_dir": "elsewhere", "dtype": "float32", "data_dir": "/data"}) == base
    assert name(folder=tmp_path / "other").name == base.name
    changed = [name({**PARAMETERS, "max_new_tokens": 9}), name(settings=ev.GenerationSettings(6, early_stop=False, seed=1)),
               name(methods=METHODS[:2]), name(examples=EXAMPLES[:1]), name(examples=EXAMPLES[::-1]),
               name(examples=[EXAMPLES[0], Example("cnndm", "b", "Article: Another text.\nSummary:", "x")])]
    assert len({base, *changed}) == 1 + len(changed)
    model.set_skip_layers([1], [2])
    try:
        assert name() != base, "another draft, another file"
    finally:
        model.set_skip_layers(*hand_made_set(model.num_layers))


def test_a_file_of_another_setup_is_refused(model, embedded, tmp_path):
    results = ev.results_file(tmp_path, "evaluate_sum", PARAMETERS, model, EXAMPLES, METHODS, SETTINGS)
    lines = results.path.read_text().splitlines()
    header = json.loads(lines[0])
    header["header"]["setup"]["settings"]["seed"] = 7  # edited by hand: no longer the setup its name says
    results.path.write_text(json.dumps(header) + "\n")
    with pytest.raises(ValueError, match="holds another setup"):
        ev.results_file(tmp_path, "evaluate_sum", PARAMETERS, model, EXAMPLES, METHODS, SETTINGS)
    results.path.write_text(lines[0] + "\n")
    # Records that do not fit the methods given (a file handed to another run) are refused before anything runs.
    results.append("a", [{"method": "base", "sample": 0, "task": "cnndm"}])
    with pytest.raises(ValueError, match="example 'a' is not one of this run's, or lacks"):
        ev.generate_all(model, Tokenizer(embedded[1]), EXAMPLES, METHODS, SETTINGS, progress=False, results=results)
    results.path.write_text("not json\n")
    with pytest.raises(ValueError, match="line 1: not valid JSON"):
        rs.read_results(results.path)
    results.path.write_text('{"run": {}}\n')
    with pytest.raises(ValueError, match="is not an ssd result file"):
        rs.read_results(results.path)


def test_the_table_is_written_beside_the_records(uninterrupted):
    _, results = uninterrupted
    path = results.write_table([{"method": "base", "speedup": 1.0}, {"method": "essg adaptive", "speedup": None}])
    assert path == results.path.with_suffix(".csv")
    assert path.read_text() == "method,speedup\nbase,1.0\nessg adaptive,\n"
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, results.path.name])  # no temporary left
    assert "2 examples already there (commits " in results.status()


def test_git_state_outside_a_checkout(tmp_path):
    assert rs.git_state(tmp_path) == (None, None)
