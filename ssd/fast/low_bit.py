"""Low-bit copies of linear weights: a draft cheaper by precision as well as by depth.

Weight-only quantisation on PyTorch's own kernels (torchao's CPU int8 and int4
weight-only layouts call the same two ops, so it would add a dependency and
nothing else): int8 with one scale per output row (`_weight_int8pack_mm`), and
int4 with a scale and a zero point per group of `INT4_GROUP_SIZE` inputs
(`_weight_int4pack_mm_for_cpu`). Only the draft runs the copies; verification
runs the model's own weights, so the output is the full model's whatever the
copies round to.

The products take bfloat16 activations whatever the model's dtype: the CPU
kernels vectorise that path only, and with float32 activations int8 is slower
than float32 `F.linear` (design.md, "Measurements behind the code").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssd.core.draft import PRECISIONS

# Divides the hidden sizes of the LLaMA family (576, 1536, 2048, 4096, 5120, 8960, 11008, 13824...);
# 128, the CUDA kernels' usual group, does not divide SmolLM2's 576.
INT4_GROUP_SIZE = 32
INT4_ROW_MULTIPLE = 16  # the CPU kernel packs output rows in tiles of 16
ACTIVATIONS = torch.bfloat16  # the kernels' input dtype (see above); outputs are cast back


@dataclass(frozen=True)
class Int8Weight:
    """`weight ≈ values * scales[:, None]`, one scale per output row: any subset of rows is itself an
    `Int8Weight` (`rows`), which the draft's trimmed LM head needs."""

    values: torch.Tensor  # [N, K] int8
    scales: torch.Tensor  # [N], in ACTIVATIONS
    bias: torch.Tensor | None = None  # [N], the linear's own, in its dtype

    @classmethod
    def quantise(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Int8Weight:
        w = weight.detach().float()
        scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127
        values = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
        return cls(values, scales.to(ACTIVATIONS), bias)

    def rows(self, ids: torch.Tensor | slice) -> Int8Weight:
        """These rows (a slice: a view, no copy)."""
        bias = None if self.bias is None else self.bias[ids].contiguous()
        return Int8Weight(self.values[ids].contiguous(), self.scales[ids].contiguous(), bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, x.shape[-1]).to(ACTIVATIONS), self.values, self.scales)
        out = out.view(*x.shape[:-1], -1).to(x.dtype)
        return out if self.bias is None else out + self.bias

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.scales.nbytes


@dataclass(frozen=True)
class Int4Weight:
    """`weight ≈ (q - 8) * scale + zero` per group of `INT4_GROUP_SIZE` inputs, q in 0..15, packed in
    the CPU kernel's tiles (rows cannot be gathered from them)."""

    packed: torch.Tensor  # the kernel's layout, two values a byte
    scales_and_zeros: torch.Tensor  # [K / group, N, 2], in ACTIVATIONS
    out_features: int
    bias: torch.Tensor | None = None  # [N], the linear's own, in its dtype

    @classmethod
    def quantise(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Int4Weight:
        n, k = weight.shape
        if k % INT4_GROUP_SIZE or n % INT4_ROW_MULTIPLE:
            raise ValueError(f"int4 needs input sizes divisible by {INT4_GROUP_SIZE} and output sizes by "
                             f"{INT4_ROW_MULTIPLE} (the kernel's tiles), got a [{n}, {k}] weight")
        groups = weight.detach().float().view(n, k // INT4_GROUP_SIZE, INT4_GROUP_SIZE)
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)
        scales = ((high - low) / 15).clamp(min=1e-6)
        q = torch.round((groups - low[..., None]) / scales[..., None]).clamp(0, 15).to(torch.int32).view(n, k)
        zeros = low + 8 * scales  # so that (q - 8) * scale + zero = q * scale + low
        scales_and_zeros = torch.stack([scales, zeros], dim=-1).transpose(0, 1).contiguous().to(ACTIVATIONS)
        return cls(torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1), scales_and_zeros, n, bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.reshape(-1, x.shape[-1]).to(ACTIVATIONS), self.packed, INT4_GROUP_SIZE, self.scales_and_zeros
        )
        out = out.view(*x.shape[:-1], self.out_features).to(x.dtype)
        return out if self.bias is None else out + self.bias

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales_and_zeros.nbytes


LowBitWeight = Int8Weight | Int4Weight


@dataclass(frozen=True)
class LowBitLayer:
    """A decoder layer's linear weights for the draft. q, k and v are one product, gate and up another:
    4 kernel calls a layer instead of 7, each with its casts (the draft is bound by such small ops)."""

    qkv: LowBitWeight
    o: LowBitWeight
    gate_up: LowBitWeight
    down: LowBitWeight

    @property
    def nbytes(self) -> int:
        return self.qkv.nbytes + self.o.nbytes + self.gate_up.nbytes + self.down.nbytes

    @classmethod
    def of(cls, layer, precision: str) -> LowBitLayer:
        """A copy of a decoder layer's (`LlamaDecoderLayer`) projections at `precision`; biases are kept."""
        attn, mlp = layer.self_attn, layer.mlp
        qkv = (attn.q_proj, attn.k_proj, attn.v_proj)
        return cls(
            qkv=quantise(torch.cat([p.weight for p in qkv]), precision, _biases(qkv)),
            o=quantise(attn.o_proj.weight, precision, attn.o_proj.bias),
            gate_up=quantise(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), precision,
                             _biases((mlp.gate_proj, mlp.up_proj))),
            down=quantise(mlp.down_proj.weight, precision, mlp.down_proj.bias),
        )


def _biases(projections) -> torch.Tensor | None:
    """The biases of projections fused into one product, or None where they have none."""
    return None if projections[0].bias is None else torch.cat([p.bias for p in projections])


def quantise(weight: torch.Tensor, precision: str, bias: torch.Tensor | None = None) -> LowBitWeight:
    """A low-bit copy of `weight` ([out, in]) on its device; `bias` is added to its products as it is."""
    if precision == "int8":
        return Int8Weight.quantise(weight, bias)
    if precision == "int4":
        if weight.device.type != "cpu":
            raise ValueError(f"draft precision 'int4' has no kernel on {weight.device.type} (it has on cpu)")
        return Int4Weight.quantise(weight, bias)
    raise ValueError(f"unknown draft precision {precision!r}; choose from {PRECISIONS} or None")


def check_kernel(precision: str, device: torch.device, dtype: torch.dtype) -> None:
    """Raise a ValueError naming both when `precision` has no kernel for `dtype` activations on `device`."""
    weight = torch.randn(64, 64, dtype=dtype, device=device)
    try:
        low_bit = quantise(weight, precision)
        low_bit(torch.randn(2, 64, dtype=dtype, device=device))
    except (RuntimeError, NotImplementedError) as error:
        raise ValueError(
            f"draft precision {precision!r} has no kernel for {dtype} on {device} ({str(error).splitlines()[0]})"
        ) from None


class LowBitCopies:
    """A model's low-bit copies: every layer's at each precision a draft has asked for, and one int8 copy
    of the LM head under either (per-row scales let the trimmed draft head gather its rows; int4's packed
    tiles do not). Built on first use and kept: the cache a draft's precision keys into.

    Copies of every layer (a proposer may change its skip set every step), on the device of the weight
    they copy; the model's own weights are untouched. A precision without a kernel on the model's
    devices, or one whose kernel cannot take the weights' shapes, is an error naming both, and nothing
    is stored.
    """

    def __init__(self):
        self.layers: dict[str, list[LowBitLayer]] = {}
        self.lm_head_int8: Int8Weight | None = None

    def at(self, model, precision: str) -> list[LowBitLayer]:
        """Every layer's copy at `precision` for `model` (a `LlamaForCausalLM`), built on first use."""
        if precision not in self.layers:
            if precision not in PRECISIONS:
                raise ValueError(f"unknown draft precision {precision!r}; choose from {PRECISIONS} or None")
            for device in {p.device for p in model.parameters()}:
                check_kernel(precision, device, model.dtype)
            # Every copy first, then stored: a weight the kernel cannot take leaves the cache as it was.
            layers = [LowBitLayer.of(layer, precision) for layer in model.model.layers]
            head = self.lm_head_int8 or quantise(model.lm_head.weight, "int8")
            self.layers[precision], self.lm_head_int8 = layers, head
        return self.layers[precision]

    def nbytes(self, precision: str) -> int:
        """Memory the copies for `precision` take (the int8 LM head counted once, under either)."""
        head = self.lm_head_int8.nbytes if self.lm_head_int8 is not None else 0
        return sum(copy.nbytes for copy in self.layers.get(precision, ())) + head
