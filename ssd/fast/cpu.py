"""What the CPU is, and the kernel choices that follow from it: MKL's code path and how `Linear`
runs float32 products of a few rows. Each rule was measured on the CPUs this project runs on."""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> str:
    """/proc/cpuinfo, or "" where there is none (not Linux): then no CPU feature is assumed."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _flags(cpuinfo: str) -> set[str]:
    return set(next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "").split())


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX); elsewhere it is emulated."""
    flags = _flags(_cpuinfo())
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_has_amx(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has AMX tiles: there oneDNN runs bfloat16 products of more than 32 rows on other
    kernels than shorter ones, and sums keys in adjacent pairs (docs/numerics.md)."""
    return "amx_bf16" in _flags(_cpuinfo() if cpuinfo is None else cpuinfo)


# Read once, at import: compiled graphs take it as a constant (`ssd.fast.linear`, `ssd.core.attention`).
AMX = cpu_has_amx()


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU's model name from /proc/cpuinfo, or the machine's architecture where it has none."""
    cpuinfo = _cpuinfo() if cpuinfo is None else cpuinfo
    line = next((line for line in cpuinfo.splitlines() if line.startswith("model name")), None)
    return line.split(":", 1)[1].strip() if line else platform.machine()


def available_memory(meminfo: str | None = None) -> int | None:
    """Bytes of memory available to a new allocation (`MemAvailable` in /proc/meminfo), or None where
    there is no such file (not Linux)."""
    if meminfo is None:
        try:
            meminfo = Path("/proc/meminfo").read_text()
        except OSError:
            return None
    line = next((line for line in meminfo.splitlines() if line.startswith("MemAvailable:")), None)
    return None if line is None else int(line.split()[1]) * 1024  # in kB


def use_fast_mkl_path() -> None:
    """Set `MKL_CBWR` to `mkl_code_path()` unless the user has set it.

    MKL reads it when it first runs (the first matrix product), so this must
    run before any model is used; `import ssd` does it.
    """
    if (code_path := mkl_code_path()) is not None:
        os.environ.setdefault("MKL_CBWR", code_path)


def mkl_code_path(cpuinfo: str | None = None) -> str | None:
    """The `MKL_CBWR` code path that makes MKL fast on this CPU, or None to leave MKL's own choice.

    MKL picks slow generic kernels on x86 CPUs not made by Intel: there the few-row products of a
    verification took about twice as long as with the code path named (design.md, "Measurements
    behind the code"), while one row ran as fast either way.
    """
    cpuinfo = _cpuinfo() if cpuinfo is None else cpuinfo
    flags = _flags(cpuinfo)
    if "GenuineIntel" in cpuinfo or "avx2" not in flags:
        return None  # Intel: MKL already takes the best path; without AVX2 no path was measured
    return "AVX512" if "avx512f" in flags else "AVX2"


@dataclass(frozen=True)
class Float32Products:
    """How `Linear` runs float32 products on a CPU.

    Products of 1 to `padded_rows` rows run as `padded_rows` rows: a row's
    result is then the same whatever rows come with it, so a one-token step and
    a verification of up to that many tokens compute the same products, and a
    compiled graph sees one shape. `few_transposed` and `many_transposed` say
    whether those products, and longer ones, run as `weight @ x.T` rather than
    `x @ weight.T`: MKL streams the weights at different speeds through the
    two, by CPU and row count. Decoding is bound by streaming the weights, so
    padding rows cost nothing.
    """

    padded_rows: int
    few_transposed: bool
    many_transposed: bool


# ms for SmolLM2-135M's products, weights from memory, 2 threads, eager:
#   rows                                      1    2    3    4    5    8   13   16
#   Intel Xeon AVX512, x @ W.T (F.linear)    47   48   48   98   94  109  168  219   (30 layers + LM head)
#   Intel Xeon AVX512, W @ x.T               49   87   88   82   73   76   89   91
#   AMD EPYC AVX2, x @ W.T (F.linear)        52-58 for 1-4 rows                 85        (30 layers)
#   AMD EPYC AVX2, W @ x.T                   43 for 1-4 rows, padded to 4      119
#   AMD EPYC AVX512, x @ W.T, MKL AVX512     44   37   46   36        42   54             (30 layers + LM head)
#   AMD EPYC AVX512, W @ x.T, MKL AVX512     45   17   25   24        39   88
AMD_PRODUCTS = Float32Products(padded_rows=4, few_transposed=True, many_transposed=False)
INTEL_PRODUCTS = Float32Products(padded_rows=3, few_transposed=False, many_transposed=True)


def float32_products(cpuinfo: str | None = None) -> Float32Products:
    """The measured rule for this CPU: AMD's where MKL is steered onto a fast path (`mkl_code_path`),
    Intel's elsewhere (other CPUs were not measured; Intel's keeps short products on `F.linear`'s own layout)."""
    return AMD_PRODUCTS if mkl_code_path(cpuinfo) is not None else INTEL_PRODUCTS
