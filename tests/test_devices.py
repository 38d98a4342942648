"""The device policy (`ssd.fast.device`): a GPU's rules checked on this CPU by describing a GPU, a stored draft
whose precision a device lacks, a checkpoint that samples by default, and a model under accelerate's
hooks (as `device_map` places one over several GPUs) through every method."""

import logging

import accelerate
import pytest
import torch
from helpers import NEAR_TIE_FLOAT32, assert_same_tokens
from transformers import GenerationConfig, LlamaConfig

import ssd
import ssd.core.modeling_llama
import ssd.loading.model
from ssd.core.searching import LayerSkippingSearching, SearchConfig
from ssd.core.skip_layers import apply_skip_layers, hand_made_set, save_skip_layers
from ssd.fast.cpu import cpu_has_native_bfloat16
from ssd.fast.device import DeviceProfile, rows_made_invariant
from ssd.loading.model import default_draft_precision, should_pack_weights, stock_twin, weight_bytes
from ssd.tools import bench
from ssd.tools.comparisons import compare_skip_sets
from ssd.tools.prompts import encode

# LLaMA-2's generation_config.json (meta-llama/Llama-2-7b-hf and -13b-hf): sampling by default.
LLAMA_2_GENERATION = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0, do_sample=True, temperature=0.6,
                          top_p=0.9, max_length=4096)
AMPERE = DeviceProfile.cuda((8, 0), low_bit=("int8",))
VOLTA = DeviceProfile.cuda((7, 0), low_bit=())


@pytest.mark.parametrize("profile, dtype", [(AMPERE, torch.bfloat16), (VOLTA, torch.float16),
                                            (DeviceProfile.cuda((7, 5)), torch.float16)])
def test_a_gpu_decodes_in_its_native_half_precision(profile, dtype):
    """bfloat16 from compute capability 8.0 on; before it (V100, T4) bfloat16 is emulated: float16."""
    assert profile.dtype == dtype


@pytest.mark.parametrize("profile", [AMPERE, VOLTA])
def test_a_gpu_runs_eager_unpacked_and_without_row_invariance(profile):
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert not profile.compiles(dtype) and not profile.packs(dtype) and not rows_made_invariant("cuda", dtype)
        assert "near-tied" in profile.exactness_caveat(dtype)
    assert profile.default_draft_precisions == ()  # no low-bit draft was measured on a GPU


@pytest.mark.parametrize("native", [True, False])
def test_a_cpu_profile(native):
    cpu = DeviceProfile("cpu", "a described CPU", native, ("int8", "int4"), compiler=True)
    assert cpu.dtype == (torch.bfloat16 if native else torch.float32)
    assert cpu.compiles(torch.float32) and cpu.compiles(torch.bfloat16) == native
    assert cpu.packs(torch.bfloat16) == native and not cpu.packs(torch.float32)
    assert rows_made_invariant("cpu", torch.bfloat16) and not rows_made_invariant("cpu", torch.float32)
    assert cpu.default_draft_precisions == ("int4", "int8") and cpu.exactness_caveat(torch.bfloat16) is None
    assert not DeviceProfile("cpu", "no compiler", native, (), compiler=False).compiles(torch.float32)


def test_this_machines_cpu():
    cpu = DeviceProfile.of("cpu")
    assert cpu.native_bfloat16 == cpu_has_native_bfloat16() and set(cpu.low_bit) == {"int8", "int4"}
    assert DeviceProfile.of(torch.device("cpu")) is cpu  # read once


@pytest.mark.parametrize("profile, asked, got", [
    (AMPERE, "int4", None), (VOLTA, "int4", None), (VOLTA, "int8", None), (AMPERE, "int8", "int8"),
    (AMPERE, None, None), (DeviceProfile.of("cpu"), "int4", "int4"),
    (DeviceProfile("cpu", "int8 only", False, ("int8",)), "int4", "int8"),
])
def test_a_precision_without_a_kernel_falls_to_the_best_the_device_drafts_with(profile, asked, got):
    """On a GPU int4 falls to the model's own weights: its int8 kernel was never measured there."""
    assert profile.draft_precision(asked) == got


def test_bad_profiles_are_refused():
    with pytest.raises(ValueError, match="'cpu' or 'cuda'"):
        DeviceProfile("mps", "x", True, ())
    with pytest.raises(ValueError, match="unknown draft precisions"):
        DeviceProfile("cpu", "x", True, ("int2",))


def test_the_embedded_models_loading_defaults_under_a_gpus_profile(embedded):
    """The real model: on a described GPU it keeps its own weights for the draft, and packs nothing."""
    model, _ = embedded
    before = model.default_draft
    assert default_draft_precision(model, AMPERE) is None and model.default_draft == before
    assert not should_pack_weights(model, AMPERE)


def test_a_stored_int4_entry_on_a_gpu_keeps_its_skip_set(embedded, tmp_path, caplog):
    """The shipped entries pin int4, which has no kernel on a GPU: the entry's skip set drafts at the best
    precision the device has (here none: the model's own weights), said in one log line, and never crashes."""
    model, _ = embedded
    path = tmp_path / "skip_layers.json"
    save_skip_layers("searched", [3, 5], [4], path, draft_precision="int4")
    with caplog.at_level(logging.WARNING, logger="ssd.fast.device"):
        draft = apply_skip_layers(model, "searched", path, profile=VOLTA)
    assert draft == ssd.Draft.skipping([3, 5], [4], None) == model.default_draft
    (line,) = [r.getMessage() for r in caplog.records if r.name == "ssd.fast.device"]
    assert "'searched'" in line and "'int4'" in line and "cuda" in line


def test_a_draft_the_device_runs_is_kept_as_it_is(caplog):
    draft = ssd.Draft.skipping([3], [4], "int4")
    with caplog.at_level(logging.WARNING, logger="ssd.fast.device"):
        assert DeviceProfile.of("cpu").fit_draft(draft) is draft
        assert AMPERE.fit_draft(draft) == draft.replace(precision=None)
    assert len(caplog.records) == 1


def test_a_model_that_cannot_fit_is_refused_before_loading(monkeypatch):
    """Its weights alone against the memory free where it goes, before anything is read; Llama-2-13B's
    shape counted on the meta device."""
    config = LlamaConfig(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                         num_key_value_heads=40, vocab_size=32000, tie_word_embeddings=False)
    assert 13.0e9 * 2 < weight_bytes(config, torch.bfloat16) < 13.1e9 * 2

    def no_loading(*args, **kwargs):
        raise AssertionError("the weights were loaded before the memory check")

    monkeypatch.setattr(ssd.core.modeling_llama.LlamaForCausalLM, "from_pretrained", no_loading)
    monkeypatch.setattr(ssd.loading.model, "available_memory", lambda: 100 * 2**20)
    with pytest.raises(MemoryError, match=r"needs about 0\.5 GiB for its float32 weights and cpu has 0\.1 GiB free"):
        ssd.load_model(dtype="float32", device="cpu")


# --- greedy means greedy -------------------------------------------------------------------


@pytest.fixture
def samples_by_default(embedded, monkeypatch):
    """The embedded model carrying LLaMA-2's generation settings (`do_sample: true`)."""
    model, tokenizer = embedded
    monkeypatch.setattr(model, "generation_config", GenerationConfig(**LLAMA_2_GENERATION))
    return model, tokenizer


def test_the_bench_decodes_greedily_whatever_the_checkpoint_says(samples_by_default, base_tokens):
    """LLaMA-2's `do_sample: true` made `base` sample and `essg` refuse ("essg is greedy") in the bench."""
    model, tokenizer = samples_by_default
    args = bench.parse_args(["--methods", "hf", "base", "hybrid", "essg", "self-draft", "clasp", "recycling",
                             "--max-new-tokens", "12"])
    input_ids = encode(tokenizer, "chat", "Name three rivers in Europe.")
    expected = base_tokens(input_ids, 12)
    for name, method in bench.build_methods(args, model).items():
        tokens = method(input_ids, "chat").tokens
        if name == "hf":  # stock kernels: float32 may part at a near-tie
            assert_same_tokens(expected, tokens, model, input_ids, NEAR_TIE_FLOAT32, name)
        else:
            assert tokens == expected, name
    sampled = bench.ours(model, "sss", 12)(input_ids, "chat").tokens
    assert len(sampled) == 12


def test_the_notebooks_comparisons_decode_greedily_whatever_the_checkpoint_says(samples_by_default, prompts):
    model, tokenizer = samples_by_default
    sets = {"hand-made": hand_made_set(model.num_layers)}
    rows = compare_skip_sets(model, tokenizer, {"humaneval": prompts[:1]}, sets, 8, progress=False, gate=False)
    assert rows[0]["identical"] == 1 and rows[0]["drafted"] > 0


# --- several devices: accelerate's hooks ----------------------------------------------------


@pytest.fixture(scope="module")
def dispatched():
    """A fresh embedded model (float32, eager, int8 draft copies) under accelerate's hooks, each block its
    own entry of the device map, as `device_map="auto"` places a model over several GPUs: every module's
    inputs go through a hook, and `forward`'s list arguments arrive as copies."""
    model, tokenizer = ssd.load_model(dtype=torch.float32, device="cpu", compile=False, draft_precision="int8")
    device_map = {"model.embed_tokens": "cpu", **{f"model.layers.{i}": "cpu" for i in range(model.num_layers)},
                  "model.norm": "cpu", "lm_head": "cpu"}
    model = accelerate.dispatch_model(model, device_map, force_hooks=True)
    assert hasattr(model, "_hf_hook") and hasattr(model.model.layers[0], "_hf_hook")
    model.set_skip_layers([18, 20, 22], [19, 21])
    return model, tokenizer


GREEDY_SETTINGS = {
    "hybrid": {}, "hybrid, no lookups": {"ngram_size": 0}, "hybrid, trees": {"lookup_ways": 3, "branches": 2},
    "essg": {"draft": ssd.Draft.skipping([18, 20, 22], [19, 21])},
    "clasp": {}, "recycling": {}, "swift": {},
}


@torch.no_grad()
def test_every_method_under_accelerates_hooks_equals_base(dispatched, prompts, base_tokens):
    model, tokenizer = dispatched
    input_ids = tokenizer(prompts[0], return_tensors="pt").input_ids
    expected = ssd.generate(model, input_ids, method="base", max_new_tokens=24, eos_token_id=[])[0, -24:].tolist()
    # The undispatched model is compiled, this one eager: float32 may part at a near-tie.
    assert_same_tokens(base_tokens(input_ids, 24), expected, model, input_ids, NEAR_TIE_FLOAT32, "dispatched base")
    for label, options in GREEDY_SETTINGS.items():
        method = label.split(",")[0]
        swift = {"swift": ssd.SwiftConfig(context_window=8, max_opt_iter=4)} if method == "swift" else {}
        out = ssd.generate(model, input_ids, method=method, max_new_tokens=24, eos_token_id=[],
                           return_dict_in_generate=True, **swift, **options)
        assert out.tokens == expected, label
        assert out.num_drafted_tokens > 0, label
    clasp = ssd.generate(model, input_ids, method="clasp", max_new_tokens=24, eos_token_id=[], gate=False,
                         return_dict_in_generate=True)
    assert clasp.tokens == expected  # its selection runs on the verification's hidden states
    twin = stock_twin(model)  # the bench's stock generate, on the same weights, placed alike
    assert hasattr(twin, "_hf_hook")
    stock = bench.hf_method(twin, 24)(input_ids, "t").tokens
    assert_same_tokens(expected, stock, model, input_ids, NEAR_TIE_FLOAT32, "stock generate under hooks")


@torch.no_grad()
def test_sampling_and_the_search_under_accelerates_hooks(dispatched, prompts):
    """The trimmed draft head scatters its logits into the vocabulary (sampling), and the search maps its
    columns back to token ids, with the model's logits coming back through its top-level hook."""
    model, tokenizer = dispatched
    input_ids = tokenizer(prompts[0], return_tensors="pt").input_ids
    out = ssd.generate(model, input_ids, method="hybrid", do_sample=True, max_new_tokens=16, eos_token_id=[],
                       generator=torch.Generator().manual_seed(0), return_dict_in_generate=True)
    assert len(out.tokens) == 16 and out.num_drafted_tokens > 0
    search = LayerSkippingSearching(model, tokenizer, [prompts[0]], SearchConfig(max_new_tokens=8, precisions=(None,)))
    matches, _ = search.acceptance([], [])
    assert matches[0].all(), "the full model as its own draft agrees with itself"
