"""The evaluation notebooks' result files: one JSONL file per setup, written an example at a time, resumable.

A paper-sized run (1000 examples on a GPU) takes hours, so an interruption
must lose at most the example in progress, and a rerun must continue where
it stopped. Each example's records are appended as one line, flushed to
disk, as soon as all its methods have run (`ssd.core.files.append_jsonl`);
a rerun with the same setup reads them back and generates only the examples
still missing (`ssd.tools.evaluation.generate_all`). The file's name ends in
a short hash of the setup (every parameter that changes what is generated
or timed), so another setup writes another file and never mixes with this one.

Lines of a file:

- `{"header": {"key": ..., "setup": {...}}}`, first: the setup the name's
  hash is made of (the notebook's parameters, with dtype, device and
  compilation as loaded; the methods; the generation settings; the
  examples' digest; the model's draft).
- `{"run": {...}}`: who wrote the example lines after it: commit (and
  whether the checkout had changes), CPU, device and its name, dtype,
  library versions, start time. A resumed run adds its own.
- `{"example": id, "run": i, "records": [...]}`: one example's records,
  written by run line `i` (0-based).

A last line cut short by a kill is ignored, and cut off before the next
append. One process writes a file at a time.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers

from ssd.core.files import append_jsonl, read_jsonl, write_csv_atomic, write_text_atomic
from ssd.fast.cpu import cpu_name
from ssd.fast.device import DeviceProfile, dtype_name

REPOSITORY = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPOSITORY / "results"  # gitignored
# Parameters that say where things are, not what runs: left out of the setup (the examples' digest stands for the data).
LOCATIONS = frozenset({"results_dir", "data_dir", "data_files"})


@dataclass(frozen=True)
class Results:
    """A result file's contents: its setup, its run lines, and each example's records, in the file's order."""

    key: str
    setup: dict
    runs: list[dict]
    examples: dict[str, list[dict]]

    @property
    def records(self) -> list[dict]:
        return [r for records in self.examples.values() for r in records]


def read_results(path: str | Path) -> Results:
    """A result file's contents; a torn last line is left out. An example written twice is an error (two
    processes wrote the file at once?), as is a file that does not start with a header."""
    path = Path(path)
    lines = read_jsonl(path, log=True)
    if not lines or "header" not in lines[0]:
        raise ValueError(f"{path} is not an ssd result file: its first line is no header")
    runs, examples = [], {}
    for number, line in enumerate(lines[1:], 2):
        if "run" in line and "example" not in line:
            runs.append(line["run"])
        elif "example" in line:
            if line["example"] in examples:
                raise ValueError(f"{path}, line {number}: example {line['example']!r} is there twice")
            examples[line["example"]] = line["records"]
        else:
            raise ValueError(f"{path}, line {number}: neither a run nor an example line")
    return Results(lines[0]["header"]["key"], lines[0]["header"]["setup"], runs, examples)


class ResultsFile:
    """One setup's result file, open for appending examples (`open`)."""

    def __init__(self, path: Path, key: str, setup: dict, run: dict, runs_before: int):
        self.path, self.key, self.setup = path, key, setup
        self._run, self._run_index, self._runs_before = run, None, runs_before

    @classmethod
    def open(cls, folder: str | Path | None, prefix: str, setup: dict, run: dict) -> ResultsFile:
        """`<folder>/<prefix>_<key>.jsonl` (None: the repository's `results/`), `key` the setup's hash:
        created with its header if new, else checked to hold this setup. `run`: this process's provenance
        (`provenance`), written before its first example."""
        setup = json.loads(json.dumps(setup))  # as a reader will see it
        key = setup_key(setup)
        path = (RESULTS_DIR if folder is None else Path(folder)) / f"{prefix}_{key}.jsonl"
        if not path.exists():
            write_text_atomic(path, json.dumps({"header": {"key": key, "setup": setup}}) + "\n")
        found = read_results(path)
        if found.setup != setup:
            raise ValueError(f"{path} holds another setup than this run's (edited by hand?): move it away or fix it")
        return cls(path, key, setup, run, len(found.runs))

    def read(self) -> Results:
        return read_results(self.path)

    def append(self, example_id: str, records: list[dict]) -> None:
        """One example's records, as one line flushed to disk; this process's run line first, once."""
        if self._run_index is None:
            append_jsonl(self.path, {"run": self._run})
            self._run_index = self._runs_before
        append_jsonl(self.path, {"example": example_id, "run": self._run_index, "records": records})

    def write_table(self, table: list[dict]) -> Path:
        """The table beside the records, `<name>.csv`, written atomically."""
        path = self.path.with_suffix(".csv")
        write_csv_atomic(path, table)
        return path

    def status(self) -> str:
        """One line: the file, and what it already holds."""
        found = self.read()
        commits = sorted({(run["commit"] or "no git")[:10] + (" with changes" if run["dirty"] else "") for run in found.runs})
        held = f"{len(found.examples)} examples already there" + (f" (commits {', '.join(commits)})" if commits else "")
        return f"{self.path}: {held}"


def setup_key(setup: dict) -> str:
    """12 hex digits of the setup's SHA-256, keys sorted: the same setup always names the same file."""
    return hashlib.sha256(json.dumps(setup, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def as_loaded(parameters: dict, model) -> dict:
    """Parameters that change what runs (`LOCATIONS` left out), with dtype, device and compile as loaded:
    a parameter's None resolved (`dtype=None` and `dtype="float32"` that load the same model are one setup)."""
    kept = {k: v for k, v in parameters.items() if k not in LOCATIONS}
    return {**kept, "dtype": dtype_name(model.dtype), "device": model.device.type, "compile": model.compiled}


def draft_setup(model) -> dict:
    """The model's default draft, as JSON: its skipped sub-layers and its precision."""
    draft = model.default_draft
    return dict(attention=sorted(draft.attention), mlp=sorted(draft.mlp), precision=draft.precision)


def provenance(model) -> dict:
    """Who is writing: the checkout's commit (None outside a git checkout) and whether it had changes, the
    CPU, the model's device, its name and dtype, library versions, and when the run started (UTC)."""
    commit, dirty = git_state()
    return dict(
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"), commit=commit, dirty=dirty, cpu=cpu_name(),
        device=str(model.device), device_name=DeviceProfile.of(model.device).name, dtype=dtype_name(model.dtype),
        python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__,
    )


def git_state(folder: Path = REPOSITORY) -> tuple[str | None, bool | None]:
    """The commit checked out at `folder` and whether tracked or untracked files differ from it
    (ignored ones do not count); (None, None) where `folder` is not a checkout's top (an installed
    package) or git is missing."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=True,
                              timeout=60).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != folder.resolve():
            return None, None
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain"))
    except (OSError, subprocess.SubprocessError):
        return None, None
