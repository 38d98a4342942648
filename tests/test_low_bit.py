"""The quantised self-draft: low-bit copies of the weights, drafts that stay exact, and clear errors."""

import json

import pytest
import torch
from helpers import NEAR_TIE_FLOAT32, assert_same_tokens, tiny_llama

import ssd
from ssd.core.draft import precision_bytes_share
from ssd.core.skip_layers import hand_made_set
from ssd.fast.linear import Linear
from ssd.fast.low_bit import INT4_GROUP_SIZE, Int8Weight, quantise

UPPER_HALF = hand_made_set(30)  # the embedded model has 30 layers
MAX_NEW_TOKENS = 48


@pytest.fixture
def precision(embedded):
    """Sets the embedded model's default draft precision for one test (conftest's `default_drafts_per_test`
    puts the full model back)."""
    model, _ = embedded
    return model.set_draft_precision


@pytest.mark.parametrize("name, tolerance", [("int8", 0.02), ("int4", 0.1)])  # bfloat16 activations: ~1% alone
def test_copies_approximate_the_weight_for_a_fraction_of_its_bytes(name, tolerance):
    torch.manual_seed(0)
    weight, x = torch.randn(192, 576) * 0.05, torch.randn(3, 576)
    low_bit = quantise(weight, name)
    expected = x @ weight.T
    error = (low_bit(x) - expected).abs().max() / expected.abs().max()
    assert 0 < error < tolerance, error  # a copy, not the weight itself
    assert low_bit.nbytes <= weight.nbytes * precision_bytes_share(name, weight.dtype) * 1.5


def test_int8_rows_are_the_rows_of_the_copy():
    """The trimmed draft head gathers its rows from the head's int8 copy: the same as quantising those rows."""
    weight = torch.randn(100, 64)
    ids = torch.tensor([3, 50, 99])
    gathered, direct = quantise(weight, "int8").rows(ids), Int8Weight.quantise(weight[ids])
    assert torch.equal(gathered.values, direct.values) and torch.equal(gathered.scales, direct.scales)


@pytest.mark.parametrize("name, tolerance", [("int8", 0.02), ("int4", 0.2)])
@torch.no_grad()
def test_draft_forward_with_biases_approximates_the_full_model(name, tolerance):
    """Fused q/k/v and gate/up copies keep each linear's bias (Qwen2-style attention biases)."""
    model = tiny_llama(attention_bias=True, mlp_bias=True)
    for module in model.modules():
        if isinstance(module, Linear) and module.bias is not None:
            torch.nn.init.normal_(module.bias, std=0.5)
    input_ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    full = model(input_ids, model.new_cache(16), 0)
    draft = model(input_ids, model.new_cache(16), 0, draft=ssd.Draft(precision=name))
    error = (draft - full).abs().max() / full.abs().max()
    assert 0 < error < tolerance, error


def test_bad_precisions_are_refused_and_change_nothing(embedded, precision):
    model, _ = embedded
    precision("int8")
    with pytest.raises(ValueError, match="unknown draft precision 'int3'"):
        model.set_draft_precision("int3")
    assert model.get_draft_precision() == "int8"
    with pytest.raises(ValueError, match="'int4' has no kernel on meta"):
        quantise(torch.empty(64, 64, device="meta"), "int4")
    with pytest.raises(ValueError, match=f"divisible by {INT4_GROUP_SIZE}"):
        quantise(torch.randn(64, 48), "int4")


def test_copies_cover_every_layer_and_leave_the_weights_alone(embedded, precision):
    model, _ = embedded
    before = {name: p.clone() for name, p in model.named_parameters() if name.startswith("model.layers.3.")}
    precision("int4")
    assert len(model.low_bit.layers["int4"]) == model.num_layers
    assert model.low_bit.lm_head_int8 is not None  # the head is int8 under either precision
    for name, value in before.items():
        assert torch.equal(model.get_parameter(name), value)
    # One layer's fused copies compute what its own linears do, to int4's precision.
    layer, x = model.model.layers[3], torch.randn(2, model.config.hidden_size)
    attn, copy = layer.self_attn, model.low_bit.layers["int4"][3]
    expected = torch.cat([attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)], dim=-1)
    assert (copy.qkv(x) - expected).abs().max() < 0.1 * expected.abs().max()
    linears = [m for m in model.model.layers.modules() if isinstance(m, Linear)]
    weight_bytes = sum(m.weight.nbytes for m in linears) + model.lm_head.weight.nbytes
    share = model.low_bit.nbytes("int4") / weight_bytes
    assert 0.1 < share < 0.3, share  # float32 weights: int4 plus its group scales, and the int8 head


@pytest.mark.parametrize("name", ["int8", "int4"])
@pytest.mark.parametrize("skip", ["none", "upper-half"])
def test_quantised_drafts_equal_base(embedded, prompts, base_tokens, precision, name, skip):
    """Every step drafts (no gate, no lookups) with the low-bit copies; output stays base's."""
    model, tokenizer = embedded
    precision(name)
    model.set_skip_layers(*(UPPER_HALF if skip == "upper-half" else ([], [])))
    for index in (0, 4):
        input_ids = tokenizer(prompts[index], return_tensors="pt").input_ids
        base = base_tokens(input_ids, MAX_NEW_TOKENS)
        out = ssd.generate(model, input_ids, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=[], return_dict_in_generate=True,
                           gate=False, ngram_size=0, auto_th_stop_draft=False, th_stop_draft=0.0, max_step_draft=4)
        assert_same_tokens(base, out.tokens, model, input_ids, NEAR_TIE_FLOAT32, f"{name} draft, skip {skip}")
        assert out.num_drafted_tokens >= out.num_verifications - 1 and out.num_looked_up_tokens == 0
        # A low-bit draft of the whole model agrees often; skipping sub-layers on top costs agreement.
        assert 0 < out.num_accepted_tokens < out.num_drafted_tokens or skip == "none"


def test_the_gate_offers_a_quantised_draft_with_nothing_skipped(embedded, prompts, base_tokens, precision):
    """Nothing skipped but fewer bits is a real, cheaper draft: the gate runs it (and stays exact)."""
    model, tokenizer = embedded
    precision("int8")
    input_ids = tokenizer(prompts[1], return_tensors="pt").input_ids
    out = ssd.generate(model, input_ids, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=[], return_dict_in_generate=True)
    assert out.tokens == base_tokens(input_ids, MAX_NEW_TOKENS)
    assert out.num_drafted_tokens > out.num_looked_up_tokens


def test_skip_layers_entry_carries_the_precision(embedded, precision, tmp_path):
    model, _ = embedded
    path = tmp_path / "skip_layers.json"
    ssd.save_skip_layers("quantised", [2], [3], path=path, draft_precision="int4")
    ssd.save_skip_layers("plain", [1], [], path=path)
    assert ssd.apply_skip_layers(model, "quantised", path) == ssd.Draft.skipping([2], [3], "int4") and model.get_draft_precision() == "int4"
    # An entry without a precision keeps the model's.
    ssd.apply_skip_layers(model, "plain", path)
    assert model.get_skip_layers() == ([1], []) and model.get_draft_precision() == "int4"
    entries = json.loads(path.read_text())
    entries["bad"] = {"attention": [], "mlp": [], "draft_precision": "int2"}
    path.write_text(json.dumps(entries))
    with pytest.raises(ValueError, match="draft_precision 'int2'"):
        ssd.apply_skip_layers(model, "quantised", path)
    assert model.get_skip_layers() == ([1], []) and model.get_draft_precision() == "int4"


def test_swift_optimises_skip_sets_on_top_of_the_quantised_draft(embedded, prompts, base_tokens, precision):
    model, tokenizer = embedded
    precision("int8")
    config = ssd.SwiftConfig(skip_ratio=0.2, context_window=12, max_opt_iter=10, bayes_interval=5, max_score=1.0)
    input_ids = tokenizer(prompts[2], return_tensors="pt").input_ids
    out = ssd.generate(model, input_ids, max_new_tokens=32, eos_token_id=[], method="swift", swift=config,
                       return_dict_in_generate=True)
    assert out.tokens == base_tokens(input_ids, 32)
    assert out.swift["opt_steps"] > 0 and model.get_draft_precision() == "int8"


def test_load_model_drafts_in_int4_on_a_cpu(embedded):
    model, _ = embedded
    assert ssd.loading.model.default_draft_precision(model) == "int4" == model.get_draft_precision()
