"""`load_model` on tiny local checkpoints: hub arguments, the kept tokenizer, and quiet logs.

The checkpoints are written here (a GGUF with a byte-level tokenizer, and a
safetensors folder), so each load takes well under a second and needs no network.
"""

import logging
from types import SimpleNamespace

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig
from transformers.convert_slow_tokenizer import bytes_to_unicode

import ssd
import ssd.loading.model
from ssd.core.modeling_llama import LlamaForCausalLM
from ssd.loading.checkpoints import (
    PACKED_GGUF_ADVICE,
    PACKED_GGUF_ADVICE_LOGGER,
    embedded_checkpoint,
    embedded_model_path,
)
from ssd.loading.model import HUB_KWARGS

SUBFOLDER = "sub"
GGUF_NAME = "tiny.gguf"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_gguf(path, hidden=16, layers=2, heads=2, kv_heads=1, ffn=32):
    """A LLaMA GGUF as llama.cpp lays it out, float32 random weights, a byte-level BPE vocabulary."""
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = special + list(bytes_to_unicode().values()) + ["Ġt", "he", "Ġthe"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(special) + [1] * (len(tokens) - len(special)))  # 3: control
    writer.add_token_merges(["Ġ t", "h e", "Ġt he"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template(CHAT_TEMPLATE)
    rng = np.random.default_rng(0)
    kv = kv_heads * hidden // heads

    def weight(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    writer.add_tensor("token_embd.weight", weight(len(tokens), hidden))
    for i in range(layers):
        for name, shape in [("attn_q", (hidden, hidden)), ("attn_k", (kv, hidden)), ("attn_v", (kv, hidden)),
                            ("attn_output", (hidden, hidden)), ("ffn_gate", (ffn, hidden)),
                            ("ffn_up", (ffn, hidden)), ("ffn_down", (hidden, ffn))]:
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(*shape))
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def gguf_root(tmp_path_factory):
    """A folder whose subfolder `sub` holds `tiny.gguf`; the folder itself holds nothing to load."""
    root = tmp_path_factory.mktemp("gguf_repo")
    (root / SUBFOLDER).mkdir()
    write_tiny_gguf(root / SUBFOLDER / GGUF_NAME)
    return root


@pytest.fixture
def transformers_log():
    """The records transformers logs, captured where its own handler prints them (it does not propagate)."""
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    library_logger = logging.getLogger("transformers")
    library_logger.addHandler(handler)
    yield records
    library_logger.removeHandler(handler)


def messages(records):
    return [record.getMessage() for record in records]


def spy(monkeypatch, name, calls):
    """Record the keyword arguments `ssd.loading.model` passes to `name.from_pretrained`, and still load for real.

    Only `ssd.loading.model`' own calls: transformers' inner ones (`AutoTokenizer` reads a config too) are not
    recorded. The weights' call goes to ssd's model class (`model_class`), spied on the class itself.
    """
    if name == "LlamaForCausalLM":
        original = LlamaForCausalLM.from_pretrained.__func__

        def load_weights(cls, *args, **kwargs):
            calls[name] = kwargs
            return original(cls, *args, **kwargs)

        monkeypatch.setattr(LlamaForCausalLM, "from_pretrained", classmethod(load_weights))
        return
    original = getattr(ssd.loading.model, name).from_pretrained

    def from_pretrained(*args, **kwargs):
        calls[name] = kwargs
        return original(*args, **kwargs)

    monkeypatch.setattr(ssd.loading.model, name, SimpleNamespace(from_pretrained=from_pretrained))


SPIED = ("AutoConfig", "AutoTokenizer", "LlamaForCausalLM")


@pytest.fixture(scope="module")
def saved_root(gguf_root, tmp_path_factory):
    """A folder whose subfolder `sub` holds a saved safetensors checkpoint and its tokenizer."""
    root = tmp_path_factory.mktemp("saved_repo")
    config = LlamaConfig(vocab_size=262, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / SUBFOLDER)
    AutoTokenizer.from_pretrained(gguf_root / SUBFOLDER, gguf_file=GGUF_NAME).save_pretrained(root / SUBFOLDER)
    return root


def test_hub_arguments_reach_config_weights_and_tokenizer(saved_root, tmp_path, monkeypatch):
    calls = {}
    for name in SPIED:
        spy(monkeypatch, name, calls)
    hub = {"token": "hf_not_a_real_token", "revision": "main", "cache_dir": str(tmp_path / "cache"),
           "local_files_only": True, "subfolder": SUBFOLDER}
    assert set(hub) <= set(HUB_KWARGS)
    model, tokenizer = ssd.load_model(saved_root, dtype=torch.float32, device="cpu", compile=False,
                                      device_map="cpu", **hub)
    assert set(calls) == set(SPIED)
    for owner, kwargs in calls.items():
        assert {key: kwargs.get(key) for key in hub} == hub, owner
    assert calls["LlamaForCausalLM"]["device_map"] == "cpu"
    assert "device_map" not in calls["AutoConfig"] and "device_map" not in calls["AutoTokenizer"]

    saved = LlamaForCausalLM.from_pretrained(saved_root / SUBFOLDER, dtype=torch.float32)
    for name, tensor in saved.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert tokenizer.chat_template == CHAT_TEMPLATE


def test_gguf_in_a_subfolder(gguf_root, monkeypatch):
    """`gguf_file` reaches all three; the tokenizer gets the GGUF's path in the repository instead of
    `subfolder`, which transformers ignores there."""
    calls = {}
    for name in SPIED:
        spy(monkeypatch, name, calls)
    model, tokenizer = ssd.load_model(gguf_root, dtype=torch.float32, device="cpu", compile=False,
                                      subfolder=SUBFOLDER, gguf_file=GGUF_NAME, local_files_only=True)
    for owner in ("AutoConfig", "LlamaForCausalLM"):
        assert (calls[owner]["subfolder"], calls[owner]["gguf_file"]) == (SUBFOLDER, GGUF_NAME), owner
    assert "subfolder" not in calls["AutoTokenizer"]
    assert calls["AutoTokenizer"]["gguf_file"] == f"{SUBFOLDER}/{GGUF_NAME}"
    assert calls["AutoTokenizer"]["local_files_only"] is True
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == len(tokenizer)
    assert tokenizer.chat_template == CHAT_TEMPLATE


def test_tokenizer_is_kept_on_the_model(gguf_root):
    model, tokenizer = ssd.load_model(gguf_root / SUBFOLDER, gguf_file=GGUF_NAME, dtype=torch.float32,
                                      device="cpu", compile=False)
    assert model.tokenizer is tokenizer
    assert model.tokenizer.chat_template == CHAT_TEMPLATE


def test_packed_gguf_advice_is_silenced_and_other_warnings_are_not(gguf_root, transformers_log, monkeypatch):
    where = {"pretrained_model_name_or_path": gguf_root / SUBFOLDER, "gguf_file": GGUF_NAME}
    LlamaForCausalLM.from_pretrained(**where, dtype=torch.bfloat16)
    if not any(message.startswith(PACKED_GGUF_ADVICE) for message in messages(transformers_log)):
        pytest.skip("transformers no longer gives the packed-GGUF advice on a bfloat16 GGUF load")
    transformers_log.clear()

    unrelated = "an unrelated warning, logged during the load"
    original = LlamaForCausalLM.from_pretrained

    def from_pretrained(*args, **kwargs):
        logging.getLogger(PACKED_GGUF_ADVICE_LOGGER).warning(unrelated)
        logging.getLogger("transformers.modeling_utils").warning(unrelated)
        return original(*args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "from_pretrained", from_pretrained)
    model, _ = ssd.load_model(where["pretrained_model_name_or_path"], gguf_file=GGUF_NAME, dtype=torch.bfloat16,
                              device="cpu", compile=False)
    assert model.dtype == torch.bfloat16
    logged = messages(transformers_log)
    assert not [message for message in logged if message.startswith(PACKED_GGUF_ADVICE)]
    assert logged.count(unrelated) == 2

    transformers_log.clear()
    logging.getLogger(PACKED_GGUF_ADVICE_LOGGER).warning(PACKED_GGUF_ADVICE)  # outside a load: not filtered
    assert messages(transformers_log) == [PACKED_GGUF_ADVICE]


def test_embedded_checkpoint_is_the_gguf():
    """The converted folder `load_model()` reads holds the GGUF's weights and tokenizer, bit for bit."""
    folder, name = embedded_model_path()
    from_gguf = LlamaForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).state_dict()
    converted = LlamaForCausalLM.from_pretrained(embedded_checkpoint(), dtype=torch.float32).state_dict()
    assert from_gguf.keys() == converted.keys()
    for key, tensor in from_gguf.items():
        assert torch.equal(tensor, converted[key]), key
    gguf_tokenizer, tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name), AutoTokenizer.from_pretrained(embedded_checkpoint())
    chat = [{"role": "user", "content": "Héllo wörld!\n\tdef f(x): return x**2  # 😀"}]
    assert gguf_tokenizer.apply_chat_template(chat, add_generation_prompt=True) == tokenizer.apply_chat_template(
        chat, add_generation_prompt=True)
    assert (gguf_tokenizer.bos_token_id, gguf_tokenizer.eos_token_id, len(gguf_tokenizer)) == (
        tokenizer.bos_token_id, tokenizer.eos_token_id, len(tokenizer))
