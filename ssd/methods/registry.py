"""Drafting methods by name, as `ssd.generate(..., method=name)` takes them. Each method registers the
proposers it decodes with, and its settings, where it is written (`essg` and `sss` in `paper`, `hybrid` in
`hybrid`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ssd.core.draft import Draft
from ssd.core.modeling_llama import LlamaForCausalLM
from ssd.core.proposers import Proposer

# Builds one generation's proposers from the model, the draft settings (`ssd.methods.hybrid.DraftConfig`) and
# the `draft=` given (or None).
ProposerFactory = Callable[[LlamaForCausalLM, Any, Draft | None], list[Proposer]]


@dataclasses.dataclass(frozen=True)
class DraftingMethod:
    """A drafting method of `generate`: the proposers it decodes with, whether it can sample
    (greedy always works; a method that samples must give its proposals' probabilities), and its settings
    (a `DraftConfig`, which `generate`'s keyword settings change; None: the default method's)."""

    proposers: ProposerFactory
    samples: bool = True
    config: Any = None


# Every drafting method by name; "base" (no drafting) and "swift" (a stream optimiser) are `generate`'s own.
DRAFTING_METHODS: dict[str, DraftingMethod] = {}


def register_method(name: str, proposers: ProposerFactory, samples: bool = True, config: Any = None) -> None:
    """Make `generate(..., method=name)` decode with the proposers `proposers(model, config, draft)`
    builds for each generation, chosen among by the gate (docs/design.md, "Adding a drafting method");
    `config`: the method's `DraftConfig` before the caller's settings (None: the default method's)."""
    if not isinstance(name, str) or not name or name in ("base", "swift"):
        raise ValueError(f"a method needs a new non-empty name other than 'base' and 'swift', got {name!r}")
    if not callable(proposers):
        raise ValueError(f"proposers must be a callable (model, config, draft) -> list of proposers, got {proposers!r}")
    DRAFTING_METHODS[name] = DraftingMethod(proposers, samples, config)

