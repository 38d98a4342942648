"""A GGUF published in chunk packages is joined once, verified before every use, rebuilt when damaged,
and never used when it does not match; and Qwen2.5-Coder-1.5B-Instruct, when its packages are installed,
loads and decodes exactly."""

import hashlib
import importlib.util
import logging
import os

import pytest
import torch
from helpers import NEAR_TIE_FLOAT32, assert_same_tokens, data_dir, fixed_prompts, shared, stock_greedy
from transformers import AutoModelForCausalLM

import ssd
from ssd.core.modeling_llama import Qwen2ForCausalLM
from ssd.loading.checkpoints import QWEN_CODER, QWEN_CODER_KEY, PartedGGUF, parted_gguf, qwen_coder_checkpoint

CHUNKS = [b"GGUF" + os.urandom(1000), os.urandom(1000), os.urandom(37)]


@pytest.fixture
def parted(tmp_path, monkeypatch):
    """Three chunk packages `chunkpkg1..3` on the import path, and their spec."""
    for n, chunk in enumerate(CHUNKS, start=1):
        data = tmp_path / "site" / f"chunkpkg{n}" / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("")
        (data / f"part{n:02d}.bin").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    whole = b"".join(CHUNKS)
    spec = PartedGGUF(package="chunkpkg", parts=len(CHUNKS), size=len(whole), sha256=hashlib.sha256(whole).hexdigest(),
                      end_of_sequence=(), install="pip install chunkpkg")
    return spec, tmp_path / "cache" / "model.gguf"


def test_chunks_are_joined_once_and_verified(parted):
    spec, target = parted
    assert parted_gguf(spec, target) == target and target.read_bytes() == b"".join(CHUNKS)
    written = target.stat().st_mtime_ns
    assert parted_gguf(spec, target) == target and target.stat().st_mtime_ns == written  # verified, not rewritten
    assert [p.name for p in target.parent.iterdir()] == ["model.gguf"]  # no staging file left


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_file_is_reported_and_rebuilt(parted, damage, caplog):
    spec, target = parted
    parted_gguf(spec, target)
    data = bytearray(target.read_bytes())
    if damage == "truncated":
        del data[-10:]
    else:
        data[500] ^= 1  # same size, another hash
    target.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="ssd.loading.checkpoints"):
        assert parted_gguf(spec, target).read_bytes() == b"".join(CHUNKS)
    assert "rebuilding" in caplog.text and ("bytes" if damage == "truncated" else "sha256") in caplog.text


def test_chunks_that_do_not_match_are_never_used(parted):
    spec, target = parted
    wrong = PartedGGUF(**{**spec.__dict__, "sha256": "0" * 64})
    with pytest.raises(ValueError, match="do not join into the published file.*pip install chunkpkg"):
        parted_gguf(wrong, target)
    assert not target.parent.exists() or not list(target.parent.iterdir())


def test_a_missing_package_names_the_install_command(parted):
    spec, target = parted
    more = PartedGGUF(**{**spec.__dict__, "parts": 4})
    with pytest.raises(FileNotFoundError, match="chunkpkg4 is not installed: pip install chunkpkg"):
        parted_gguf(more, target)
    assert not target.exists()


# --- the real model, when its packages are installed --------------------------------------

qwen_installed = pytest.mark.skipif(
    importlib.util.find_spec(f"{QWEN_CODER.package}1") is None,
    reason=f"Qwen2.5-Coder-1.5B's packages are not installed ({QWEN_CODER.install})",
)


@pytest.fixture(scope="module")
def qwen_coder():
    """(model, tokenizer): the named model in ssd's class, float32, eager, drafting at full precision."""
    model, tokenizer = ssd.load_model(QWEN_CODER_KEY, dtype=torch.float32, device="cpu", compile=False,
                                      draft_precision=None)
    return shared(model), tokenizer


@qwen_installed
@torch.no_grad()
def test_qwen_coder_runs_every_method_exactly(qwen_coder):
    """The named model loads as Qwen2 with both of its EOS ids; greedy self-speculative output (essg with
    full-precision and int4 drafts, SWIFT) equals base decoding, stops at EOS as base does, and seeded
    self-speculative sampling reproduces (float32, eager)."""
    model, tokenizer = qwen_coder
    assert isinstance(model, Qwen2ForCausalLM) and model.num_layers == 28
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    chat = [{"role": "user", "content": "Write a Python function that returns the n-th Fibonacci number."}]
    base = ssd.generate(model, chat, method="base", max_new_tokens=40, eos_token_id=[])
    assert "def" in tokenizer.decode(base[0])
    for precision in (None, "int4"):
        model.set_draft_precision(precision)
        model.set_skip_layers([20, 22], [21, 23])
        assert torch.equal(ssd.generate(model, chat, method="hybrid", max_new_tokens=40, eos_token_id=[]), base), precision
    model.set_skip_layers([], [])
    swift = ssd.generate(model, chat, method="swift", max_new_tokens=40, eos_token_id=[],
                         swift=ssd.SwiftConfig(context_window=8, max_opt_iter=6))
    assert torch.equal(swift, base)
    # A short answer ends at <|im_end|>, one of its two EOS ids, for base and essg alike.
    short = [{"role": "user", "content": "Reply with the single word: yes"}]
    ended = ssd.generate(model, short, method="base", max_new_tokens=24)
    assert ended[0, -1].item() in model.generation_config.eos_token_id
    assert torch.equal(ssd.generate(model, short, max_new_tokens=24), ended)
    samples = [ssd.generate(model, chat, do_sample=True, temperature=0.7, max_new_tokens=12,
                            generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(*samples)


@pytest.fixture(scope="module")
def qwen_stock():
    """Stock transformers' Qwen2ForCausalLM on the same converted weights, float32."""
    return AutoModelForCausalLM.from_pretrained(qwen_coder_checkpoint(), dtype=torch.float32).eval()


@qwen_installed
@pytest.mark.parametrize("task", ["humaneval", "cnndm", "xsum"])
@torch.no_grad()
def test_qwen_coder_equals_stock_generate(qwen_coder, qwen_stock, task):
    """On a prompt of each task (CNN/DM and XSum 1-shot), greedy base and essg (lookups on with an int4 draft,
    lookups off with a full-precision one, both skipping sub-layers, the gate off so that every step drafts)
    equal stock transformers' `generate` on the same weights, stopping at either EOS id (float32, eager; 32
    new tokens)."""
    model, tokenizer = qwen_coder
    if task == "humaneval":
        prompt = fixed_prompts(task, 1)[0]
    elif (folder := data_dir()) is not None:
        prompt = fixed_prompts(task, 1, folder, max_words=200)[0]
    else:
        pytest.skip(f"the offline {task} data ($SSD_DATA_DIR) is not here")
    input_ids = tokenizer(prompt, return_tensors="pt").input_ids
    expected = stock_greedy(qwen_stock, input_ids, 32, eos_token_id=model.generation_config.eos_token_id)
    base = ssd.generate(model, input_ids, method="base", max_new_tokens=32)[0, input_ids.shape[1]:].tolist()
    assert_same_tokens(expected, base, model, input_ids, NEAR_TIE_FLOAT32, "base vs stock")
    model.set_skip_layers([20, 22], [21, 23])
    for precision, ngram_size in (("int4", 3), (None, 0)):
        model.set_draft_precision(precision)
        out = ssd.generate(model, input_ids, method="hybrid", max_new_tokens=32, gate=False, ngram_size=ngram_size,
                           return_dict_in_generate=True)
        label = f"hybrid (draft {precision}, ngram_size {ngram_size}) vs stock"
        assert_same_tokens(expected, out.tokens, model, input_ids, NEAR_TIE_FLOAT32, label)
        assert out.num_drafted_tokens > 0
