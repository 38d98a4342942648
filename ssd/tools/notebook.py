"""Notebook parameters that one environment variable can override.

Each notebook's first cell is `P = ssd.tools.notebook.parameters("search", n_iter=200, ...)`:
the defaults a reader sees and edits in place. `$SSD_NOTEBOOK_PARAMS` (a JSON
file, or a JSON string) maps notebook names to overrides; CI points it at
`notebooks/ci_params.json` so every notebook runs top to bottom in minutes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

ENV = "SSD_NOTEBOOK_PARAMS"


def _overrides(notebook: str) -> dict:
    source = os.environ.get(ENV, "").strip()
    if not source:
        return {}
    if source.startswith(("{", "[")):
        text = source
    elif Path(source).is_file():
        text = Path(source).read_text()
    else:
        raise FileNotFoundError(f"${ENV} is neither JSON nor a file: {source[:200]}")
    try:
        table = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"${ENV} is not valid JSON ({error}): {source[:200]}") from None
    if not isinstance(table, dict) or not isinstance(table.get(notebook, {}), dict):
        raise ValueError(f"${ENV} must map notebook names to objects of parameters, got {source[:200]}")
    return table.get(notebook, {})


def parameters(notebook: str, **defaults) -> SimpleNamespace:
    """The notebook's parameters: `defaults`, updated from `$SSD_NOTEBOOK_PARAMS[notebook]`.

    An override of a parameter the notebook does not have is an error, so a
    typo cannot silently run the full-size notebook; so is one of another type
    than its default (where the default is not None), before any cell runs.
    """
    overrides = _overrides(notebook)
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f"${ENV} sets {unknown} for {notebook!r}, which has parameters {sorted(defaults)}")
    for name, value in overrides.items():
        if not _same_kind(value, defaults[name]):
            raise ValueError(f"${ENV} sets {notebook}'s {name} to {value!r} ({type(value).__name__}); its default "
                             f"is {defaults[name]!r} ({type(defaults[name]).__name__}; null is also allowed)")
    if overrides:
        print(f"${ENV} overrides: {overrides}")
    return SimpleNamespace(**{**defaults, **overrides})


def _same_kind(value, default) -> bool:
    """JSON's view of a type: None fits anything, an int fits a float, a list fits a tuple; True is no int."""
    if value is None or default is None:
        return True
    kinds = {bool: bool, int: int, float: (int, float), str: str, list: (list, tuple), tuple: (list, tuple), dict: dict}
    allowed = kinds.get(type(default), type(default))
    return isinstance(value, allowed) and not (isinstance(value, bool) and type(default) is not bool)


def as_params(namespace) -> dict:
    """Notebook parameters as a JSON-ready dict."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(namespace).items()}
