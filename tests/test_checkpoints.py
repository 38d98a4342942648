"""A GGUF published in chunk packages is joined once, verified before every use, rebuilt when damaged,
and never used when it does not match; and Qwen2.5-Coder-1.5B-Instruct, when its packages are installed,
loads and decodes exactly."""

import hashlib
import importlib.util
import logging
import os
import sys

import pytest
import torch

import ssd
from ssd.checkpoints import QWEN_CODER, QWEN_CODER_KEY, PartedGGUF, parted_gguf
from ssd.modeling_llama import Qwen2ForCausalLM

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
    with caplog.at_level(logging.WARNING, logger="ssd.checkpoints"):
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


@qwen_installed
@torch.no_grad()
def test_qwen_coder_loads_and_decodes_exactly():
    """The named model loads as Qwen2, ends at either of its two EOS tokens, and its self-speculative
    greedy output equals base decoding (float32, eager, full-precision and int4 drafts)."""
    model, tokenizer = ssd.load_model(QWEN_CODER_KEY, dtype=torch.float32, device="cpu", compile=False,
                                      draft_precision=None)
    assert isinstance(model, Qwen2ForCausalLM) and model.num_layers == 28
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    chat = [{"role": "user", "content": "Write a Python function that returns the n-th Fibonacci number."}]
    base = ssd.generate(model, chat, method="base", max_new_tokens=40, eos_token_id=[])
    for precision in (None, "int4"):
        model.set_draft_precision(precision)
        model.set_skip_layers([20, 22], [21, 23])
        essg = ssd.generate(model, chat, method="essg", max_new_tokens=40, eos_token_id=[])
        assert torch.equal(essg, base), precision
    assert "def" in tokenizer.decode(base[0])
    model.set_skip_layers([], [])
