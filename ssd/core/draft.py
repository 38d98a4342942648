"""`Draft`: what one draft pass runs, as a value.

A draft is the full model minus some sub-layers, optionally on low-bit copies
of its weights. `LlamaForCausalLM.forward(..., draft=d)` runs `d`; `draft=None`
runs the full model. Nothing a pass reads is held as a mode of the model: a
proposer that changes its draft every step (SWIFT) passes another value.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Iterable
from dataclasses import dataclass

import torch

# The low-bit weights a draft may read (`ssd.fast.low_bit` builds them), and their bits per weight.
PRECISIONS = ("int8", "int4")
BITS = {"int8": 8, "int4": 4}


def precision_bytes_share(precision: str | None, dtype: torch.dtype) -> float:
    """The share of a `dtype` weight's bytes its `precision` copy reads (1 for None): a nominal cost,
    for what must not depend on timing (the sampling gate)."""
    return 1.0 if precision is None else BITS[precision] / (8 * dtype.itemsize)


@dataclass(frozen=True)
class Draft:
    """The sub-layers a draft pass skips (0-based layer indices) and the weights it reads.

    `precision`: `"int8"` or `"int4"` (`ssd.fast.low_bit`: the model keeps one set of copies per
    precision, built on first use), or None for the model's own weights. Hashable: the model's
    compiled graphs and low-bit copies are caches keyed by what a draft names.
    """

    attention: frozenset[int] = frozenset()
    mlp: frozenset[int] = frozenset()
    precision: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "attention", _layer_set(self.attention, "attention"))
        object.__setattr__(self, "mlp", _layer_set(self.mlp, "mlp"))
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"unknown draft precision {self.precision!r}; choose from {PRECISIONS} or None")

    @classmethod
    def skipping(cls, attention: Iterable[int] = (), mlp: Iterable[int] = (), precision: str | None = None) -> Draft:
        """A draft from skip lists, as `skip_layers.json` and the reference code write them."""
        return cls(attention, mlp, precision)

    def replace(self, **changes) -> Draft:
        return dataclasses.replace(self, **changes)

    def check(self, num_layers: int) -> Draft:
        """This draft, after checking that it names only layers of a `num_layers`-layer model."""
        for kind, layers in (("attention", self.attention), ("mlp", self.mlp)):
            beyond = sorted(i for i in layers if i >= num_layers)
            if beyond:
                raise ValueError(f"{kind} skip layers {beyond} are not layer indices of a {num_layers}-layer "
                                 f"model (0..{num_layers - 1})")
        return self

    @property
    def skip_layers(self) -> tuple[list[int], list[int]]:
        """`(attention, mlp)` as sorted lists."""
        return sorted(self.attention), sorted(self.mlp)

    @property
    def is_full_model(self) -> bool:
        """Skips nothing at the model's own precision: drafting with it saves at most the trimmed head."""
        return not self.attention and not self.mlp and self.precision is None

    def depth(self, num_layers: int) -> float:
        """The share of the model's sub-layers this draft runs."""
        return 1 - (len(self.attention) + len(self.mlp)) / (2 * num_layers)

    def __str__(self) -> str:
        attention, mlp = self.skip_layers
        return f"attention {attention}, mlp {mlp}, draft precision {self.precision or 'full'}"


def _layer_set(indices, kind: str) -> frozenset[int]:
    if isinstance(indices, (str, bytes)) or not isinstance(indices, Iterable):
        raise ValueError(f"{kind} skip layers must be a collection of layer indices, got {indices!r}")
    indices = list(indices)
    bad = [i for i in indices if not _is_index(i)]
    if bad:
        raise ValueError(f"{kind} skip layers {bad} are not layer indices (integers >= 0)")
    return frozenset(operator.index(i) for i in indices)


def _is_index(value) -> bool:
    if isinstance(value, bool):
        return False
    try:
        return operator.index(value) >= 0  # ints and numpy integers
    except TypeError:
        return False


class DefaultDraft:
    """Mixin: the draft a generation uses when given none, read once when it starts (as
    `generation_config` is). `set_skip_layers` and `set_draft_precision` set it. No pass reads it."""

    default_draft: Draft = Draft()

    def set_draft(self, draft: Draft) -> None:
        """Set the default draft, prepared now (`prepare_draft`); a draft the model or the device cannot
        run is an error, and the previous default stays."""
        self.default_draft = self.prepare_draft(draft)

    def set_skip_layers(self, attention: Iterable[int] = (), mlp: Iterable[int] = ()) -> None:
        """Set the sub-layers the default draft skips (0-based layer indices); its precision stays."""
        self.default_draft = Draft.skipping(attention, mlp, self.default_draft.precision).check(self.num_layers)

    def get_skip_layers(self) -> tuple[list[int], list[int]]:
        return self.default_draft.skip_layers

    def set_draft_precision(self, precision: str | None) -> None:
        """Set the default draft's weights: `"int8"`, `"int4"` (`ssd.fast.low_bit`), or None (the model's own).
        Its skip set stays. Builds the copies (and warms their graphs) now, see `prepare_draft`; a
        precision the device cannot run is an error, and the previous setting stays."""
        self.set_draft(self.default_draft.replace(precision=precision))

    def get_draft_precision(self) -> str | None:
        return self.default_draft.precision

    def prepare_draft(self, draft: Draft) -> Draft:
        """Build what `draft` needs before it is timed (`prepare_precision`: low-bit copies, compiled
        graphs). Returns `draft`, checked against the model's depth."""
        if not isinstance(draft, Draft):
            raise TypeError(f"a draft must be an ssd.Draft (e.g. ssd.Draft.skipping([3], [5], 'int4')), got {draft!r}")
        draft.check(self.num_layers)
        self.prepare_precision(draft.precision)
        return draft
