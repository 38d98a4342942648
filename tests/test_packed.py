"""bfloat16 products on packed weights (`ssd.fast.packed`): the same rows as the plain product's kernel, each
row independent of the others, and never a stale or missing copy used silently."""

import gc

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig

import ssd
from ssd.core.modeling_llama import LlamaForCausalLM
from ssd.fast.device import DeviceProfile
from ssd.fast.linear import Linear
from ssd.fast.packed import _PACKED, can_pack
from ssd.loading.model import should_pack_weights

pytestmark = pytest.mark.skipif(
    not can_pack(torch.device("cpu"), torch.bfloat16), reason="oneDNN has no bfloat16 kernels on this CPU"
)


def packed_linear(in_features: int, out_features: int, seed: int = 0) -> Linear:
    torch.manual_seed(seed)
    linear = Linear(in_features, out_features, bias=False).to(torch.bfloat16)
    linear.packed = ssd.fast.packed.pack(linear.weight)
    return linear


@torch.no_grad()
@pytest.mark.parametrize("shape", [(576, 576), (576, 1536), (1536, 576), (1536, 8960), (576, 49152)])
def test_rows_do_not_depend_on_the_rows_beside_them(shape):
    """Every row of a 2 to 64-row product equals that row in a product of its own (`Linear` runs one row
    as two), at SmolLM2's and Qwen2.5-1.5B's shapes: what makes a verification equal steps bit for bit."""
    linear = packed_linear(*shape)
    x = torch.randn(1, 64, shape[0]).to(torch.bfloat16)
    alone = torch.cat([linear(x[:, i : i + 1]) for i in range(64)], dim=1)
    for rows in (2, 3, 4, 5, 8, 13, 16, 33, 64):
        assert torch.equal(linear(x[:, :rows]), alone[:, :rows]), f"{rows} rows"


@torch.no_grad()
def test_a_weight_changed_in_place_is_packed_again():
    linear = packed_linear(64, 32)
    x = torch.randn(1, 4, 64).to(torch.bfloat16)
    before = linear(x)
    linear.weight.mul_(2)
    after = linear(x)
    assert not torch.equal(after, before)
    torch.testing.assert_close(after, F.linear(x, linear.weight))


@torch.no_grad()
def test_a_replaced_weight_is_an_error_not_a_stale_product():
    linear = packed_linear(64, 32)
    linear.weight = torch.nn.Parameter(torch.randn(32, 64).to(torch.bfloat16))
    with pytest.raises(RuntimeError, match="no packed copy"):
        linear(torch.randn(1, 4, 64).to(torch.bfloat16))


def test_a_copy_goes_with_its_module():
    linear = packed_linear(64, 32)
    address = linear.weight.data_ptr()
    assert address in _PACKED
    del linear
    gc.collect()
    assert address not in _PACKED


def test_pack_weights_refuses_float32_and_keeps_the_model(embedded):
    model, _ = embedded
    with pytest.raises(ValueError, match="bfloat16 on a CPU"):
        model.pack_weights()
    assert not model.weights_packed and model.packed_nbytes == 0


def test_load_model_packs_only_what_fits_in_memory():
    """The rule `load_model` follows: bfloat16 on a CPU with native bfloat16, the copies in at most half
    the memory left."""
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    copies = sum(m.weight.nbytes for m in model.linears())
    native = DeviceProfile("cpu", "a described CPU", True, ("int8", "int4"))
    assert should_pack_weights(model, native, available=2 * copies)
    assert not should_pack_weights(model, native, available=2 * copies - 1)
    assert not should_pack_weights(model.float(), native, available=2 * copies)
    emulated = DeviceProfile("cpu", "a described CPU", False, ("int8", "int4"))
    assert not should_pack_weights(model.to(torch.bfloat16), emulated, available=2 * copies)
    assert ssd.fast.cpu.available_memory("MemTotal:  4096 kB\nMemAvailable:   2048 kB\n") == 2048 * 1024
    assert ssd.fast.cpu.available_memory("MemTotal:  4096 kB\n") is None
