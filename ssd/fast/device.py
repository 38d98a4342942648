"""What a device can do, as one value: every default that depends on the device reads it.

`DeviceProfile.of(device)` describes a device of this machine (read once per device); a profile built
by hand describes another, so the rules for a GPU are tested on a CPU (`DeviceProfile.cuda`). The
rules: the dtype `load_model` picks, whether it compiles and packs weights, whether a pass makes each
row's result independent of the rows beside it, which low-bit draft kernels exist, and which draft
precision a stored skip set runs at where its own has no kernel.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from dataclasses import dataclass

import torch

from ssd.core.draft import PRECISIONS, Draft
from ssd.fast.cpu import cpu_has_native_bfloat16, cpu_name
from ssd.fast.low_bit import check_kernel

logger = logging.getLogger(__name__)

HALF_PRECISION = (torch.bfloat16, torch.float16)
# The draft precisions `load_model` tries on a CPU, best first (docs/benchmarks.md); on a GPU none was measured.
CPU_DRAFT_PRECISIONS = ("int4", "int8")
# Cheapest first: where a stored draft's precision has no kernel, the next one that has takes its place.
PRECISION_ORDER = ("int4", "int8", None)


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` -> `"bfloat16"`."""
    return str(dtype).removeprefix("torch.")


def rows_made_invariant(device_type: str, dtype: torch.dtype) -> bool:
    """Half precision on a CPU: there `ssd` makes a row's result independent of the rows beside it
    (`ssd.fast.linear`, docs/numerics.md). GPU kernels are chosen by row count, and nothing is done there."""
    return device_type == "cpu" and dtype in HALF_PRECISION


@dataclass(frozen=True)
class DeviceProfile:
    """A device's facts, and the rules `ssd` follows on it.

    `native_bfloat16`: bfloat16 arithmetic in hardware (a CPU with AVX512-BF16 or AMX; a GPU of compute
    capability 8.0 or later), not emulated. `low_bit`: the draft precisions whose kernels run here
    (`ssd.fast.low_bit`). `compiler`: a C++ compiler for inductor's CPU kernels.
    """

    type: str
    name: str
    native_bfloat16: bool
    low_bit: tuple[str, ...]
    compiler: bool = False
    capability: tuple[int, int] | None = None  # a GPU's compute capability

    def __post_init__(self):
        if self.type not in ("cpu", "cuda"):
            raise ValueError(f"ssd runs on 'cpu' or 'cuda' devices, got {self.type!r}")
        if unknown := sorted(set(self.low_bit) - set(PRECISIONS)):
            raise ValueError(f"unknown draft precisions {unknown}; choose from {PRECISIONS}")

    @classmethod
    def of(cls, device: torch.device | str) -> DeviceProfile:
        """This machine's `device`, read once."""
        device = torch.device(device)
        return _profile(device.type, device.index if device.type == "cuda" else None)

    @classmethod
    def cuda(cls, capability: tuple[int, int] = (8, 0), low_bit: tuple[str, ...] = ("int8",),
             name: str = "a described GPU") -> DeviceProfile:
        """A GPU described by hand: bfloat16 is native from compute capability 8.0 (Ampere) on."""
        return cls("cuda", name, capability >= (8, 0), tuple(low_bit), capability=capability)

    # --- the rules ---------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        """The dtype that decodes fastest here with the exactness `ssd` promises (docs/numerics.md).

        GPUs: bfloat16 where native, float16 elsewhere (V100, T4: emulated bfloat16 is slow). CPUs:
        bfloat16 where native (faster than float32, docs/benchmarks.md), float32 elsewhere, where
        bfloat16 is emulated and its products are not row-invariant.
        """
        if self.type == "cuda":
            return torch.bfloat16 if self.native_bfloat16 else torch.float16
        return torch.bfloat16 if self.native_bfloat16 else torch.float32

    def compiles(self, dtype: torch.dtype) -> bool:
        """Compile by default: on a CPU with a C++ compiler, in float32, and in bfloat16 where it is native
        (measured faster there, and row-invariant). GPUs were not measured."""
        native = dtype == torch.float32 or dtype == torch.bfloat16 and self.native_bfloat16
        return self.type == "cpu" and self.compiler and native

    def packs(self, dtype: torch.dtype) -> bool:
        """Pack weights in oneDNN's layout by default (`ssd.fast.packed`): bfloat16 on a CPU that has it
        natively. Whether the copies fit in memory is the loader's question."""
        return self.type == "cpu" and dtype == torch.bfloat16 and self.native_bfloat16

    @property
    def default_draft_precisions(self) -> tuple[str, ...]:
        """The low-bit drafts `load_model` tries, best first: int4, then int8, on a CPU; none on a GPU,
        where no low-bit draft was measured."""
        return tuple(p for p in CPU_DRAFT_PRECISIONS if p in self.low_bit) if self.type == "cpu" else ()

    def runs(self, precision: str | None) -> bool:
        """Whether a draft at `precision` has a kernel here (None, the model's own weights, always has)."""
        return precision is None or precision in self.low_bit

    def draft_precision(self, precision: str | None) -> str | None:
        """`precision` where it has a kernel here, else the cheapest one after it that this device drafts
        with by default (`default_draft_precisions`), else None, the model's own weights. On a GPU int4
        falls to None: its int8 kernel exists in recent PyTorch but was never measured (a naive loop)."""
        if self.runs(precision):
            return precision
        later = PRECISION_ORDER[PRECISION_ORDER.index(precision) + 1 :]
        return next(p for p in later if p is None or p in self.default_draft_precisions)

    def fit_draft(self, draft: Draft, source: str = "the draft") -> Draft:
        """`draft` with a precision this device runs: its skip set kept, its precision `draft_precision`'s
        choice, said in one log line when it changes."""
        precision = self.draft_precision(draft.precision)
        if precision == draft.precision:
            return draft
        logger.warning(f"{source} asks for draft precision {draft.precision!r}, which has no kernel on {self.type}; "
                       f"drafting at {precision or 'the model precision'} instead, with the same skip set")
        return draft.replace(precision=precision)

    def exactness_caveat(self, dtype: torch.dtype) -> str | None:
        """Why greedy self-speculative output may part from step-by-step decoding here, or None.

        On a CPU `ssd` makes a token's logits independent of the other rows of its pass in half precision,
        and float32 leaves differences in the last bits (a flip needs a near-tie). On a GPU neither holds
        by construction: kernels are chosen by row count in every dtype.
        """
        if self.type == "cpu":
            return None
        return (f"on {self.type} in {dtype_name(dtype)}, a verification pass and a one-token "
                f"step run different kernels, so greedy self-speculative output can part from step-by-step "
                f"decoding where two tokens are near-tied (more often in half precision); docs/numerics.md")


@functools.lru_cache(maxsize=None)
def _profile(device_type: str, index: int | None) -> DeviceProfile:
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"ssd runs on 'cpu' or 'cuda' devices, got {device_type!r}")
    device = torch.device(device_type, index) if index is not None else torch.device(device_type)
    low_bit = tuple(p for p in PRECISIONS if _has_kernel(p, device))
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        return DeviceProfile.cuda(capability, low_bit, torch.cuda.get_device_name(device))
    compiler = shutil.which(os.environ.get("CXX", "g++")) is not None
    return DeviceProfile("cpu", cpu_name(), cpu_has_native_bfloat16(), low_bit, compiler)


def _has_kernel(precision: str, device: torch.device) -> bool:
    try:
        check_kernel(precision, device, torch.float32)
    except ValueError:
        return False
    return True
