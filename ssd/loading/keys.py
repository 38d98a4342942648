"""A model's name in `skip_layers.json` and in result files, from its hub id or folder."""

from __future__ import annotations

from pathlib import Path

from ssd.loading.checkpoints import EMBEDDED_KEY, NAMED_CHECKPOINTS, built_checkpoint_key


def model_key(name_or_path: str | Path | None) -> str:
    """A model's name in `skip_layers.json` and in result files: None (the embedded model) and a
    checkpoint built here (a `NAMED_CHECKPOINTS` name, or its folder) by their key, else the hub id's or
    folder's last part, lower-cased, without the `-hf` that Meta's transformers-format repositories add
    (`meta-llama/Llama-2-13b-hf`: `llama-2-13b`, the published set's key). A model's own:
    `model_key(model.name_or_path)`."""
    if name_or_path is None:
        return EMBEDDED_KEY
    if not str(name_or_path):
        raise ValueError("the model has no name_or_path: name its skip_layers.json key explicitly")
    if str(name_or_path) in NAMED_CHECKPOINTS:
        return str(name_or_path)
    return built_checkpoint_key(Path(name_or_path).resolve()) or Path(str(name_or_path)).name.lower().removesuffix("-hf")
