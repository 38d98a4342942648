"""What the GPU path decides, checked on a CPU: the attention each pass runs and that every path computes
causal attention, a model split by accelerate (caches beside their layers, the LM head through its hook),
offload refused, the exactness caveat, and `scripts/gpu_check.py` in its tiny setting."""

import importlib.util
import json
import math
import re
from pathlib import Path

import accelerate
import pytest
import torch
from transformers import LlamaConfig

import ssd.core.modeling_llama
from ssd.core.attention import attend, attention_path
from ssd.core.modeling_llama import LlamaForCausalLM
from ssd.core.searching import predicted_speedup
from ssd.core.self_draft import SelfDraftConfig
from ssd.fast.device import DeviceProfile
from ssd.loading.model import refuse_offload

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256)


@pytest.mark.parametrize(
    "device_type, n_queries, prefill, masked, grouped, path",
    [
        ("cpu", 4, False, True, True, "grouped"),  # a few queries: plain products
        ("cpu", 64, False, True, True, "grouped"),
        ("cpu", 65, False, True, True, "sdpa"),  # a long pass: bound by its products
        ("cpu", 100, True, True, True, "sdpa"),  # a long prefill: the flash kernel
        ("cuda", 100, True, True, True, "causal"),  # prefill: is_causal, no mask tensor
        ("cuda", 1, False, False, True, "sdpa"),  # a one-token step over exactly its keys
        ("cuda", 5, False, True, True, "expanded"),  # verification, grouped-query heads
        ("cuda", 5, False, True, False, "sdpa"),  # verification, one KV head per query head
        ("cuda", 1, False, True, True, "expanded"),  # a step over a longer, masked cache
    ],
)
def test_attention_path_by_device_and_pass(device_type, n_queries, prefill, masked, grouped, path):
    assert attention_path(device_type, n_queries, prefill, masked, grouped) == path


def reference_attention(q, k, v, start_pos):
    """Causal grouped-query attention in float64, written out."""
    group = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(group, dim=1), v.double().repeat_interleave(group, dim=1)
    scores = q.double() @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    positions = torch.arange(q.shape[2])[:, None] + start_pos
    scores = scores.masked_fill(torch.arange(k.shape[2])[None, :] > positions, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@pytest.mark.parametrize("path", ["grouped", "causal", "expanded", "sdpa"])
@pytest.mark.parametrize("start_pos, n_queries, key_len", [(0, 7, 7), (9, 4, 13), (9, 1, 10), (9, 3, 20)])
def test_every_attention_path_computes_causal_attention(monkeypatch, path, start_pos, n_queries, key_len):
    """Each path, forced, on a CPU: prefill, verification, one-token step, and a pass over a longer cache."""
    if path == "causal" and start_pos != 0:
        pytest.skip("is_causal serves prefills only")
    monkeypatch.setattr(ssd.core.attention, "attention_path", lambda *args: path)
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, n_queries, 16), torch.randn(1, 2, key_len, 16), torch.randn(1, 2, key_len, 16)
    got = attend(q, k, v, start_pos)
    torch.testing.assert_close(got.double(), reference_attention(q, k, v, start_pos), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_a_dispatched_model_keeps_caches_beside_layers_and_the_head_behind_its_hook():
    """accelerate's hooks on every module (as `device_map` gives on several GPUs): each layer's cache sits on
    its weights' device, the full LM head runs through its hook, the draft heads on its device."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY)).eval()
    ids = torch.randint(0, TINY["vocab_size"], (1, 12))
    expected = model(ids, model.new_cache(16), 0)
    device_map = {"model.embed_tokens": "cpu", **{f"model.layers.{i}": "cpu" for i in range(3)}, "model.norm": "cpu",
                  "lm_head": "cpu"}
    model = accelerate.dispatch_model(model, device_map, force_hooks=True)
    hook = model.lm_head._hf_hook
    calls = []
    original = hook.pre_forward
    hook.pre_forward = lambda module, *args, **kwargs: (calls.append(1), original(module, *args, **kwargs))[1]

    cache = model.new_cache(16)
    assert [k.device for k in cache.keys] == [layer.self_attn.k_proj.weight.device for layer in model.model.layers]
    torch.testing.assert_close(model(ids, cache, 0), expected)
    assert len(calls) == 1
    int8 = ssd.Draft(precision="int8")
    drafted = model(ids[:, -1:], cache, 11, draft=int8, head=model.draft_head(torch.arange(32)))
    model(ids[:, -1:], cache, 11, draft=int8)  # the int8 copy of the whole head
    assert drafted.shape == (1, 1, 32) and len(calls) == 1  # the draft heads are not modules: no hook


@pytest.mark.parametrize("device_map, refused", [
    ({"model": 0, "lm_head": 1}, False),
    ({"model": "cpu", "lm_head": "cpu"}, False),
    ({"model.layers.0": 0, "model.layers.1": "cpu", "lm_head": 0}, True),  # CPU beside a GPU
    ({"model.layers.0": "cpu", "model.layers.1": "disk"}, True),
])
def test_offload_is_refused(device_map, refused):
    if refused:
        with pytest.raises(ValueError, match="offloaded"):
            refuse_offload(device_map)
    else:
        refuse_offload(device_map)


def test_load_model_refuses_an_offloading_device_map_before_loading(tmp_path, monkeypatch):
    """End to end through `load_model`: an explicit map naming "disk" is ssd's error, and no weight loads."""
    def no_loading(*args, **kwargs):
        raise AssertionError("the weights were loaded before the device map was refused")

    monkeypatch.setattr(ssd.core.modeling_llama.LlamaForCausalLM, "from_pretrained", no_loading)
    with pytest.raises(ValueError, match=r"offloaded \(to disk"):
        ssd.load_model(device_map={"model": "cpu", "lm_head": "disk"}, offload_folder=str(tmp_path))


def test_exactness_caveat_names_the_device_and_dtype():
    cpu = DeviceProfile.of("cpu")
    assert cpu.exactness_caveat(torch.float32) is None
    assert cpu.exactness_caveat(torch.bfloat16) is None
    caveat = DeviceProfile.cuda().exactness_caveat(torch.bfloat16)
    assert "cuda" in caveat and "bfloat16" in caveat and "near-tied" in caveat


def test_gpu_check_runs_on_a_cpu(tmp_path):
    """Every first-contact check passes here: the demo's bench, LLaMA-2's sampling defaults, every method under
    accelerate's hooks, float32 exactness, the costs."""
    report = load_gpu_check().main(["--device", "cpu", "--tiny", "--output", str(tmp_path / "check.json")])
    assert json.loads((tmp_path / "check.json").read_text())["device"] == "cpu"
    assert all(row["ok"] for row in report["checks"]), report["checks"]
    assert [row["check"].split(" ")[0] for row in report["checks"]] == [
        "device", "demo", "LLaMA-2", "accelerate's", "exactness,", "exactness,", "costs,"]
    assert set(report["accelerate's hooks, every method"]["parted"]) <= {"stock generate"}
    float32 = next(r for r in report["exactness"] if r["dtype"] == "float32")
    assert float32["runs"] > 0 and float32["identical"] == float32["runs"], float32["divergences"]
    (costs,) = report["costs"]
    assert set(costs["verify ms"]) == set(range(1, 17)) and costs["step ms"] > 0
    assert set(costs["predicted speedup"]) == {"int8", "int4"}  # the CPU has both kernels
    assert report["facts"]["dtype ssd picks"] == str(ssd.DeviceProfile.of("cpu").dtype).removeprefix("torch.")


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    return gpu_check


def test_chain_speedup_is_the_replay_in_expectation():
    """The closed form gpu_check uses equals the loop `predicted_speedup` replays, over drafts accepted
    independently with probability a (a long random sequence: within 1%)."""
    acceptance, draft_cost, verify = 0.8, 0.05, (1.0, 1.0, 1.0, 1.0, 1.0)
    speedup, k = load_gpu_check().chain_speedup(acceptance, draft_cost, verify)
    assert k == 4 and speedup == pytest.approx((1 - 0.8**5) / 0.2 / (4 * 0.05 + 1.0))
    generator = torch.Generator().manual_seed(0)
    matches = [torch.rand(50_000, generator=generator) < acceptance]
    replayed = predicted_speedup(matches, [torch.ones(50_000)], SelfDraftConfig(max_step_draft=4, th_stop_draft=0.5,
                                 auto_th_stop_draft=False), draft_cost, verify)
    assert replayed == pytest.approx(speedup, rel=0.01)


def test_gpu_check_skips_what_cannot_fit(monkeypatch):
    """On a device with 24 GiB free: Llama-2-13B's cost model (float32 weights, int8 and int4 copies) is
    refused with its estimate, and exactness runs on the small shape, saying why, before anything is built."""
    gpu_check = load_gpu_check()
    need = gpu_check.bytes_needed(gpu_check.SHAPES["llama-2-13b"], torch.float32, ("int8", "int4"))
    assert 13.0e9 * 4 < need < 13.1e9 * 4 + 13e9 * 2  # its 13.0B weights, plus at most 2 bytes each of copies
    assert gpu_check.bytes_needed(gpu_check.SHAPES["llama-2-13b"], torch.bfloat16) < 13.1e9 * 2  # no copies asked
    monkeypatch.setattr(gpu_check, "bytes_available", lambda device: 24 * 2**30)
    why = gpu_check.too_large("the llama-2-13b cost model", need, torch.device("cpu"))
    assert re.fullmatch(r"the llama-2-13b cost model needs about 6\d\.\d GiB on cpu, which has 24\.0 GiB free", why)
    shape, why = gpu_check.exactness_shape(torch.device("cpu"), tiny=False)
    assert shape == "small" and "Llama-2-7B's shape in float32 needs about 2" in why
    monkeypatch.setattr(gpu_check, "bytes_available", lambda device: 2**40)
    assert gpu_check.exactness_shape(torch.device("cpu"), tiny=False) == ("llama-2-7b", None)


@pytest.mark.parametrize("argv, message", [
    (["--device", "nonsense"], "--device: device must be a torch device such as 'cpu'"),
    (["--shapes", "llama-3"], "invalid choice: 'llama-3'"),
    (["--prompts", "0"], "--prompts must be >= 1, got 0"),
])
def test_gpu_check_flags(argv, message, capsys):
    with pytest.raises(SystemExit):
        load_gpu_check().parse_args(argv)
    assert message in capsys.readouterr().err


@torch.no_grad()
def test_the_breakdown_waits_for_the_device_around_what_it_times(monkeypatch):
    """`python -m ssd.tools.breakdown` times prefills, generations and passes of n rows through `ssd.core.clock.timed`,
    which synchronises the device before and after (on a GPU, timing without it measures kernel launches)."""
    from helpers import tiny_llama

    import ssd.core.clock
    import ssd.tools.breakdown

    waits = []
    monkeypatch.setattr(ssd.core.clock, "synchronize", lambda device: waits.append(device))
    model = tiny_llama()
    input_ids = torch.tensor([[1, 5, 9, 4, 7, 8]])
    costs = ssd.tools.breakdown.row_costs(model, input_ids, rows=(1, 2, 4), repeats=2)
    assert set(costs) == {1, 2, 4} and len(waits) == 2 * 3 * 3  # before and after each of 3 runs per row count
    waits.clear()
    table, extra = ssd.tools.breakdown.breakdown(model, [input_ids], "hybrid", 8)
    assert len(waits) == 2 * 2  # the prefill and the generation
    assert extra["summary"]["tokens_per_second"] > 0


@pytest.mark.parametrize("amx", [False, True])
def test_grouped_attention_on_every_cpu_path_computes_attention(monkeypatch, amx):
    """Both CPU paths of the values product (AMX's float32 columns, and plain bfloat16), a chain and a token
    tree, against attention written out in float64, in bfloat16: whichever CPU runs the tests."""
    from ssd.core.attention import grouped_attention, tree_layout
    from ssd.fast import cpu
    from ssd.methods.tree import ancestor_mask

    monkeypatch.setattr(cpu, "AMX", amx)
    torch.manual_seed(0)
    start, n, keys = 20, 6, 40
    q = torch.randn(1, 4, n, 16).to(torch.bfloat16)
    k, v = (torch.randn(1, 2, keys, 16).to(torch.bfloat16) for _ in range(2))
    chain = torch.ones(n, keys, dtype=torch.bool).tril(start)
    expected = reference_attention(q, k, v, start)
    torch.testing.assert_close(grouped_attention(q, k, v, chain).double(), expected, atol=2e-2, rtol=2e-2)
    parents = [-1, 0, 0, 1, 2]  # five drafts after the last token, two branches
    layout = tree_layout(ancestor_mask(parents), start)
    got = grouped_attention(q, k, v, layout.path_mask(keys), layout).double()
    for row in range(n):  # each row attends to the slots below start and its ancestors' (and its own)
        seen = [*range(start), *(start + i for i in range(n) if layout.ancestors[row, i])]
        weights = torch.softmax((q[:, :, row : row + 1].double() @ k[:, :, seen].double().repeat_interleave(2, 1)
                                 .transpose(-1, -2)) / 4, dim=-1)
        torch.testing.assert_close(got[:, :, row : row + 1], weights @ v[:, :, seen].double().repeat_interleave(2, 1),
                                   atol=2e-2, rtol=2e-2)
