"""ssd's LLaMA and Qwen2 compute what stock transformers' do, for the checkpoint formats and configs it meets;
and `import ssd` points MKL at its fast kernels on CPUs where it would not choose them."""

import os
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, Qwen2Config
from transformers import LlamaForCausalLM as StockLlama
from transformers import Qwen2ForCausalLM as StockQwen2

import ssd
from ssd.core.decoding import prefill
from ssd.core.modeling_llama import LlamaForCausalLM, Qwen2ForCausalLM
from ssd.fast.cpu import AMD_PRODUCTS, INTEL_PRODUCTS, float32_products, mkl_code_path
from ssd.fast.device import DeviceProfile
from ssd.fast.linear import Linear
from ssd.loading.architectures import model_class

TINY = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            max_position_embeddings=256)


@pytest.mark.parametrize(
    "overrides",
    [
        {"num_key_value_heads": 4},  # multi-head (LLaMA-2 7B/13B)
        {"num_key_value_heads": 1, "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}},
        {"num_key_value_heads": 2, "rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
                                                       "rope_theta": 500000.0}},
        {"num_key_value_heads": 2, "attention_bias": True, "head_dim": 32, "tie_word_embeddings": False},
    ],
)
def test_logits_match_stock_transformers(overrides):
    assert_matches_stock(LlamaConfig(**TINY, **overrides), StockLlama, LlamaForCausalLM)


@pytest.mark.parametrize(
    "overrides",
    [
        {"num_key_value_heads": 2},  # grouped-query attention, as Qwen2.5's checkpoints
        # Qwen2.5's configs name a window and its layers even with sliding-window attention off.
        {"num_key_value_heads": 1, "tie_word_embeddings": True, "use_sliding_window": False, "sliding_window": 8,
         "max_window_layers": 1, "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}},
    ],
)
def test_qwen2_logits_match_stock_transformers(overrides):
    config = Qwen2Config(**TINY, **overrides)
    assert model_class(config) is Qwen2ForCausalLM
    ours = assert_matches_stock(config, StockQwen2, Qwen2ForCausalLM)
    attention = ours.model.layers[0].self_attn
    assert attention.q_proj.bias is not None and attention.v_proj.bias is not None and attention.o_proj.bias is None


@pytest.mark.parametrize("overrides", [{"use_sliding_window": True, "sliding_window": 8}, {"layer_types": ["full_attention", "sliding_attention", "full_attention"]}])
def test_sliding_window_checkpoints_are_refused(overrides):
    with pytest.raises(ValueError, match="sliding-window attention"):
        model_class(Qwen2Config(**TINY, **overrides))


@torch.no_grad()
def assert_matches_stock(config, stock_class, our_class):
    """Our model, with the stock model's random weights, gives its logits in one pass and over the cache in pieces."""
    torch.manual_seed(0)
    stock = stock_class(config).eval()
    with torch.no_grad():  # random biases: zero-initialised ones would hide a missing or misplaced bias
        for name, parameter in stock.named_parameters():
            if name.endswith("bias"):
                parameter.normal_()
    ours = our_class(config).eval()
    missing, unexpected = ours.load_state_dict(stock.state_dict(), strict=False)
    assert not unexpected and all("rotary" in key for key in missing)
    ids = torch.randint(0, config.vocab_size, (1, 40))
    expected = stock(ids).logits
    cache = ours.new_cache(64)
    torch.testing.assert_close(ours(ids, cache, 0), expected, atol=1e-5, rtol=1e-5)
    # The same logits when the sequence arrives in pieces over the cache (prefill, verify-sized chunk, single steps).
    cache = ours.new_cache(64)
    pieces = [ours(ids[:, :20], cache, 0), ours(ids[:, 20:33], cache, 20)] + [ours(ids[:, i : i + 1], cache, i) for i in range(33, 40)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), expected, atol=1e-5, rtol=1e-5)
    return ours


@torch.no_grad()
def test_local_folder_checkpoint_loads(tokenizer, tmp_path):
    """A checkpoint saved as a folder (config, safetensors, tokenizer files) loads through load_model.
    Eager (compile=False): compiling is tested on the embedded model, and a second compile costs ~1 min."""
    torch.manual_seed(0)
    stock = StockLlama(LlamaConfig(**TINY, num_key_value_heads=2)).eval()
    stock.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, reloaded_tokenizer = ssd.load_model(tmp_path, dtype=torch.float32, device="cpu", compile=False)
    assert isinstance(model, LlamaForCausalLM) and model.dtype == torch.float32
    assert reloaded_tokenizer("def add(a, b):").input_ids == tokenizer("def add(a, b):").input_ids
    ids = torch.randint(0, TINY["vocab_size"], (1, 12))
    torch.testing.assert_close(model(ids, model.new_cache(16), 0), stock(ids).logits, atol=1e-5, rtol=1e-5)


AMD_AVX2 = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx fma avx2\n"


@pytest.mark.parametrize("cpuinfo, code_path", [
    (AMD_AVX2, "AVX2"),  # MKL's generic kernels otherwise: multi-row products ~2x slower
    (AMD_AVX2.replace("avx2", "avx2 avx512f"), "AVX512"),  # likewise: 2-4 row products ~2x slower
    (AMD_AVX2.replace("AuthenticAMD", "GenuineIntel"), None),  # MKL already picks its best path
    (AMD_AVX2.replace(" avx2", ""), None),
    ("", None),
])
def test_mkl_code_path(cpuinfo, code_path):
    assert mkl_code_path(cpuinfo) == code_path


def test_import_sets_mkl_code_path_unless_the_user_did():
    script = "import os, ssd; print(os.environ.get('MKL_CBWR'))"
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    # The two interpreters start side by side: each spends seconds importing.
    chosen, mine = (subprocess.Popen([sys.executable, "-c", script], env=e, stdout=subprocess.PIPE, text=True)
                    for e in (env, env | {"MKL_CBWR": "COMPATIBLE"}))
    assert chosen.communicate()[0].strip() == str(mkl_code_path()) and chosen.returncode == 0
    assert mine.communicate()[0].strip() == "COMPATIBLE" and mine.returncode == 0


@pytest.mark.parametrize("cpuinfo, products", [
    (AMD_AVX2, AMD_PRODUCTS),
    (AMD_AVX2.replace("AuthenticAMD", "GenuineIntel"), INTEL_PRODUCTS),
    (AMD_AVX2.replace("avx2", "avx2 avx512f"), AMD_PRODUCTS),
    ("", INTEL_PRODUCTS),
])
def test_float32_products_rule(cpuinfo, products):
    assert float32_products(cpuinfo) == products


@torch.no_grad()
@pytest.mark.parametrize("products", [AMD_PRODUCTS, INTEL_PRODUCTS])
def test_few_row_float32_products_do_not_depend_on_the_other_rows(products, monkeypatch):
    """On a CPU in float32 `Linear` runs one to `padded_rows` rows as that many (docs/numerics.md): a row's
    result is the same whatever rows come with it, so a step and a short verification compute the same
    products; every row count gives the linear's product to float32 rounding. Both CPUs' rules, here."""
    torch.manual_seed(0)
    linear = Linear(576, 1536, bias=True)
    linear.products = products
    x = torch.randn(1, 8, 576)
    padded = x[:, : products.padded_rows]
    full = linear(padded)
    for n_rows in range(1, products.padded_rows + 1):
        assert torch.equal(linear(padded[:, :n_rows]), full[:, :n_rows])
        assert torch.equal(linear(padded[:, -n_rows:]), full[:, -n_rows:])
    for n_rows in range(1, 9):
        torch.testing.assert_close(linear(x[:, :n_rows]), torch.nn.functional.linear(x[:, :n_rows], linear.weight, linear.bias))


@pytest.mark.parametrize("native_bfloat16, dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_default_dtype_on_cpu(native_bfloat16, dtype):
    """bfloat16 only where the CPU computes it natively: elsewhere it is emulated and not row-invariant."""
    assert DeviceProfile("cpu", "a described CPU", native_bfloat16, ("int8", "int4")).dtype == dtype


@torch.no_grad()
def test_compiled_passes_agree_with_eager_ones(embedded, prompts, skip_layers):
    """Where load_model compiles (float32 on a CPU with g++), a compiled step and verification give the
    eager forward's logits (to rounding: fused ops sum in another order) and write the same cache; and
    the graphs compiled at load serve every pass a generation makes (sliced inputs, a verification
    that fills the cache, drafts with a skip set), with no recompilation inside a timed generation."""
    model, tokenizer = embedded
    assert model.compiled == DeviceProfile.of(model.device).compiles(model.dtype)
    if not model.compiled:
        pytest.skip("load_model left the model eager here (no C++ compiler)")
    input_ids = tokenizer(prompts[0], return_tensors="pt").input_ids
    length = input_ids.shape[1]
    with torch.compiler.set_stance("fail_on_recompile"):
        caches = [model.new_cache(length) for _ in range(2)]
        for cache in caches:
            prefill(model, input_ids[:, :-11], cache)
        # A step, a verification of a few rows (compiled), one of more (eager), one that fills the cache.
        for start, rows in ((length - 11, 1), (length - 10, 3), (length - 7, 5), (length - 2, 2)):
            chunk = input_ids[:, start : start + rows]
            compiled = model(chunk, caches[0], start)
            compiled_layers, model._compiled = model._compiled, None
            try:
                eager = model(chunk, caches[1], start)
            finally:
                model._compiled = compiled_layers
            torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)
            assert torch.equal(compiled.argmax(-1), eager.argmax(-1))
            for a, b in zip(caches[0].keys + caches[0].values, caches[1].keys + caches[1].values):
                # Keys and values to the logits' tolerance: fused ops sum in another order, and on an
                # AVX2-only AMD EPYC (MKL_CBWR=AVX2) one value of 23,616 differed by 2e-5 from eager.
                torch.testing.assert_close(a[:, :, : start + rows], b[:, :, : start + rows], atol=1e-4, rtol=1e-4)
        skip_layers([1, 4, 7], [2, 5])  # drafts run the same two graphs, fewer times
        for prompt in ("def", prompts[1]):  # a one-token prompt's first step is at position 1
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            result = ssd.exact_self_speculative_generate(model, ids, 24, draft=model.default_draft)
            assert result.num_drafted_tokens > result.num_looked_up_tokens
            assert result.tokens == ssd.base_generate(model, ids, 24).tokens
