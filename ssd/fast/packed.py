"""bfloat16 products on a CPU through weights packed once in oneDNN's blocked layout.

`F.linear` in bfloat16 hands oneDNN the weight in its plain layout at every
call, and the few-row products of decoding then stream it far below the
memory's speed. Packed once (`torch.ops.mkldnn._reorder_linear_weight`, what
inductor's freezing does for constant weights), the same products run about
twice as fast. Measured on a 2-core AMD EPYC with AVX512-BF16, 300 weights of
1536x576 streamed from memory: `F.linear` 7-9 GB/s for 1-8 rows, packed
12-16.5 GB/s (a plain read of memory: 31 GB/s).

A compiled graph cannot take oneDNN's packed tensors as inputs (they are
opaque), and `ssd`'s graphs are shared by every layer, so the product is a
custom op, `ssd::packed_linear(x, weight, bias)`, that finds `weight`'s packed
copy by its address. Each copy belongs to its `Linear` (`Linear.packed`); the
table holds it weakly, so it goes with the module, and while it lives its
weight does too, so no other tensor can take that address. A weight changed
in place since (its version counter moved) is packed again at its next use; a
weight replaced by another tensor has no copy, which is an error.

Rows stay independent of one another (bit for bit, for 2 to 64 rows at the
shapes of SmolLM2 and Qwen2.5-1.5B), but one row runs another kernel than two
at some shapes (21 of 200 rows differed at K=1536), as with `F.linear`:
`Linear` runs a one-row product as two rows either way.
"""

from __future__ import annotations

import weakref

import torch


class PackedWeight:
    """A weight's copy in oneDNN's layout, with the version of the weight it was packed from."""

    def __init__(self, weight: torch.Tensor):
        self.shape, self.dtype = weight.shape, weight.dtype
        self.pack(weight)

    def pack(self, weight: torch.Tensor) -> None:
        self.version = weight._version
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach())

    @property
    def nbytes(self) -> int:
        return self.packed.numel() * self.packed.element_size()


# address of a weight's data -> its packed copy; the copy's owner (a `Linear`) keeps it alive.
_PACKED: weakref.WeakValueDictionary[int, PackedWeight] = weakref.WeakValueDictionary()


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    """oneDNN's packed products serve bfloat16 on a CPU where oneDNN has bfloat16 kernels."""
    return device.type == "cpu" and dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def pack(weight: torch.Tensor) -> PackedWeight:
    """Pack `weight` for `packed_linear`; the caller keeps the returned copy alive as long as it is used."""
    if not can_pack(weight.device, weight.dtype):
        raise ValueError(f"packed weights are for bfloat16 on a CPU with oneDNN, not {weight.dtype} on {weight.device}")
    copy = PackedWeight(weight)
    _PACKED[weight.data_ptr()] = copy
    return copy


def _packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    copy = _PACKED.get(weight.data_ptr())
    if copy is None or copy.shape != weight.shape or copy.dtype != weight.dtype:
        raise RuntimeError(
            f"a {tuple(weight.shape)} weight has no packed copy: it was replaced after the model packed its "
            f"weights; call model.pack_weights() again"
        )
    if copy.version != weight._version:
        copy.pack(weight)
    return torch.ops.mkldnn._linear_pointwise(x, copy.packed, bias, "none", [], "")


def _packed_linear_shape(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


# Defined through `torch.library.Library` rather than `torch.library.custom_op`, whose per-call overhead
# is a large share of a small product's time, on ~200 products a step.
_LIBRARY = torch.library.Library("ssd", "DEF")
_LIBRARY.define("packed_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor")
_LIBRARY.impl("packed_linear", _packed_linear, "CPU")
torch.library.register_fake("ssd::packed_linear", _packed_linear_shape, lib=_LIBRARY)
packed_linear = torch.ops.ssd.packed_linear
"""`F.linear(x, weight, bias)` on `weight`'s packed copy (`pack`)."""
