"""`Linear`: the projections of `ssd`'s models, with the CPU product rules that keep decoding exact and fast.

Which kernel a product of a few rows runs decides both whether a verified
token's logits equal a one-token step's (bfloat16) and how fast the weights
stream (float32); the rules and their measurements are in `ssd.fast.cpu` and
docs/numerics.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssd.fast import cpu
from ssd.fast.cpu import Float32Products, float32_products
from ssd.fast.device import rows_made_invariant
from ssd.fast.packed import PackedWeight, packed_linear


def needs_row_invariance(x: torch.Tensor) -> bool:
    """Whether a pass over `x` makes each row's result independent of the rows beside it: the device rule
    `ssd.fast.device.rows_made_invariant` (half precision on a CPU)."""
    return rows_made_invariant(x.device.type, x.dtype)


# oneDNN's bfloat16 products give each row the result it gets alone for 2 to this many rows; above it, on
# Intel CPUs with AMX, other kernels run (every row count from 33 to 64 differed at SmolLM2's shapes; on
# an AMD EPYC with AVX512-BF16, 2 to 64 rows agreed).
INVARIANT_ROWS = 32


class Linear(nn.Linear):
    """`nn.Linear` that runs the few-row products of decoding on a CPU through other kernels.

    - bfloat16 (and float16): a one-row product runs another kernel than a
      several-row one and rounds differently (measured on SmolLM2's down
      projection, K=1536: 25 of 160 rows differed; 2 to 16 rows always
      agreed), so verifying k drafts in one pass would disagree with decoding
      them one at a time. A one-row product runs as two rows, and on a CPU
      with AMX one of 33 to 64 rows (a large token tree's verification) as two
      halves (`INVARIANT_ROWS`); longer ones (prefills) need no invariance.
    - float32: by the CPU's measured rule (`products`, `ssd.fast.cpu.float32_products`,
      read once per process from /proc/cpuinfo), one to `products.padded_rows` rows run as that many, so a row's result is the
      same whatever rows come with it (a step and a short verification compute
      the same products), and each product runs as `x @ weight.T` or
      `weight @ x.T`, whichever MKL streams the weights faster through there.

    In bfloat16 the products run on the weight's packed copy where the model
    packed its weights (`LlamaForCausalLM.pack_weights`, `ssd.fast.packed`).
    """

    packed: PackedWeight | None = None  # see LlamaForCausalLM.pack_weights

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.products: Float32Products = float32_products()  # this CPU's rule; a test may set another

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_rows = x.shape[-2]
        if x.device.type != "cpu":
            return super().forward(x)
        if needs_row_invariance(x):
            if n_rows == 1:
                return self._half_precision(torch.cat((x, x), dim=-2))[..., :1, :]
            if cpu.AMX and INVARIANT_ROWS < n_rows <= 2 * INVARIANT_ROWS:
                half = n_rows // 2
                return torch.cat((self._half_precision(x[..., :half, :]), self._half_precision(x[..., half:, :])), dim=-2)
            return self._half_precision(x)
        if x.dtype != torch.float32 or x.dim() != 3:
            return super().forward(x)
        padded_rows = self.products.padded_rows
        if n_rows > padded_rows:
            y = self._product(x, self.products.many_transposed)
        else:
            # Padded by a fixed number of rows, then cut: a compiled graph keeps one shape for all.
            padding = x.new_zeros(x.shape[0], padded_rows, x.shape[-1])
            y = self._product(torch.cat((x, padding), dim=-2)[:, :padded_rows], self.products.few_transposed)
            # The rows by index, not by a slice (which a compiled graph specialises for n_rows == padded_rows).
            y = y.index_select(1, torch.arange(n_rows, device=x.device))
        return y if self.bias is None else y + self.bias

    def _half_precision(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None and self.packed.dtype == x.dtype:
            return packed_linear(x, self.weight, self.bias)
        return super().forward(x)

    def _product(self, x: torch.Tensor, transposed: bool) -> torch.Tensor:
        """`x @ weight.T` for x of [batch, rows, in], as that or as `(weight @ x.T).T`."""
        if not transposed:
            return F.linear(x, self.weight)
        rows = x.reshape(-1, x.shape[-1])
        return torch.mm(self.weight, rows.T).T.reshape(*x.shape[:-1], -1)
