"""Shared fixtures: the embedded model (ours and stock transformers') and real prompts."""

import os

import pytest
import torch
from transformers import AutoModelForCausalLM

import ssd
from helpers import data_dir
from ssd.data import task_prompts
from ssd.models import embedded_model_path

torch.set_num_threads(min(4, os.cpu_count() or 1))

@pytest.fixture(scope="session")
def embedded():
    """(model, tokenizer): the embedded SmolLM2 in ssd's class, float32."""
    model, tokenizer = ssd.load_model(dtype=torch.float32, device="cpu")
    yield model, tokenizer
    model.set_skip_layers([], [])


@pytest.fixture(scope="session")
def stock():
    """The same weights in stock transformers' LlamaForCausalLM, float32."""
    folder, name = embedded_model_path()
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def prompts() -> list[str]:
    """Real prompts: HumanEval, and CNN/DM and XSum 1-shot when the shared data is there."""
    folder = data_dir()
    if folder is None:
        return task_prompts("humaneval", 9)
    return (
        task_prompts("humaneval", 3)
        + task_prompts("cnndm", 3, folder, max_words=200)
        + task_prompts("xsum", 3, folder, max_words=200)
    )


@pytest.fixture
def skip_layers(embedded):
    """Sets a skip set for one test and clears it after."""
    model, _ = embedded

    def apply(attention, mlp):
        model.set_skip_layers(attention, mlp)

    yield apply
    model.set_skip_layers([], [])
