"""skip_layers.json: drafts by model key, each `{"attention": [...], "mlp": [...], ...metadata}`.

An entry may carry `"draft_precision"` (`"int8"`, `"int4"` or null): the draft
then also runs low-bit copies of the weights (`ssd.fast.low_bit`). An entry loads
as a `Draft` value (`load_draft`). The file sits at the checkout's top level
(`skip_layers.json`, beside notebooks/ and ssd/), where the search and SWIFT write their
sets, as the reference code writes its own; `ssd/skip_layers.json` links to it, so that a
built wheel carries it as package data and a non-editable install finds the shipped sets.

Reading validates the whole file and names what is wrong; writing replaces one
entry atomically and keeps all others.
"""

from __future__ import annotations

import json
from pathlib import Path

from ssd.core.draft import PRECISIONS, Draft
from ssd.core.files import write_json_atomic
from ssd.core.modeling_llama import LlamaForCausalLM
from ssd.fast import DeviceProfile

# The package's link resolved: the top-level file in a checkout, the packaged copy in an installed wheel.
# Writes replace that file, never the link.
DEFAULT_PATH = (Path(__file__).resolve().parents[1] / "skip_layers.json").resolve()


def hand_made_set(num_layers: int) -> tuple[list[int], list[int]]:
    """The baseline a searched set must beat: every other sub-layer of the upper half but the last layer,
    attention and MLP alternating (the embedded SmolLM2-135M's 30 layers: attention 15, 17, .., 27 and
    MLP 16, 18, .., 28, 14 of 60 sub-layers)."""
    half = num_layers // 2
    return list(range(half, num_layers - 1, 2)), list(range(half + 1, num_layers - 1, 2))


def read_skip_layers(path: str | Path = DEFAULT_PATH) -> dict[str, dict]:
    """All entries, validated for shape: every entry has integer lists `attention` and `mlp`."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; name the skip-layer file in it, e.g. {path / DEFAULT_PATH.name}")
    if not path.is_file():
        raise FileNotFoundError(f"no skip-layer file at {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold an object of entries keyed by model, not {type(data).__name__}")
    for key, entry in data.items():
        for field in ("attention", "mlp"):
            values = entry.get(field) if isinstance(entry, dict) else None
            if not isinstance(values, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in values):
                raise ValueError(f"{path}: entry {key!r} needs {field!r} as a list of non-negative layer indices")
        if entry.get("draft_precision") not in (None, *PRECISIONS):
            raise ValueError(f"{path}: entry {key!r} has draft_precision {entry['draft_precision']!r}; "
                             f"choose from {PRECISIONS} or null")
    return data


def load_draft(key: str, path: str | Path = DEFAULT_PATH, num_layers: int | None = None) -> Draft:
    """The draft stored under `key` (its precision None where the entry names none), checked against a
    model depth when given."""
    entries = read_skip_layers(path)
    if key not in entries:
        raise KeyError(f"no entry {key!r} in {path}; entries: {sorted(entries)}")
    entry = entries[key]
    draft = Draft.skipping(entry["attention"], entry["mlp"], entry.get("draft_precision"))
    if num_layers is not None:
        try:
            draft.check(num_layers)
        except ValueError as error:
            raise ValueError(f"{path}: entry {key!r}: {error}") from None
    return draft


def apply_skip_layers(model: LlamaForCausalLM, key: str, path: str | Path = DEFAULT_PATH,
                      profile: DeviceProfile | None = None) -> Draft:
    """Set the model's default draft to the one stored under `key`; an entry that names no draft precision
    keeps the model's. A precision without a kernel on the device (int4 on a GPU) gives way to
    `DeviceProfile.draft_precision`'s choice, with the same skip set, in one log line (`fit_draft`;
    `profile`: None is the model's device's). Returns the draft set."""
    draft = load_draft(key, path, model.num_layers)
    if "draft_precision" not in read_skip_layers(path)[key]:
        draft = draft.replace(precision=model.default_draft.precision)
    profile = profile or DeviceProfile.of(model.device)
    draft = profile.fit_draft(draft, f"skip_layers.json entry {key!r}")
    model.set_draft(draft)
    return draft


def save_skip_layers(key: str, attention, mlp, path: str | Path = DEFAULT_PATH, overwrite: bool = True,
                     **metadata) -> None:
    """Store one entry, keeping every other. The entry is checked as reading checks a file (layer indices,
    `draft_precision`; metadata must be JSON values) before anything is written; an unreadable existing
    file is an error, never overwritten. `overwrite=False`: an existing entry under `key` is an error
    (the search's results replace no entry by accident)."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"a skip_layers.json key must be a non-empty string, got {key!r}")
    attention, mlp = Draft.skipping(attention, mlp, metadata.get("draft_precision")).skip_layers
    entry = {"attention": attention, "mlp": mlp, **metadata}
    try:
        json.dumps(entry)
    except (TypeError, ValueError) as error:
        raise ValueError(f"entry {key!r}: metadata must be JSON values ({error})") from None
    path = Path(path)
    entries = read_skip_layers(path) if path.exists() else {}
    if key in entries and not overwrite:
        raise ValueError(f"{path} already has an entry {key!r}; pass overwrite=True to replace it")
    entries[key] = entry
    write_json_atomic(path, entries)
