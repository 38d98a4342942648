"""Shared fixtures: the embedded model (ours and stock transformers') and real prompts."""

import pytest
import torch
from helpers import (
    SAMPLED_PROMPT,
    SAMPLING,
    SHARED_MODELS,
    data_dir,
    exact_token_marginal,
    fixed_prompts,
    shared,
    threads_per_worker,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

import ssd
from ssd.loading.checkpoints import embedded_checkpoint

torch.set_num_threads(threads_per_worker())  # under pytest-xdist (scripts/test.sh) workers share the cores

# The files that take minutes, longest first. pytest-xdist gives each worker whole files, in collection
# order (scripts/test.sh: `--dist loadfile --no-loadscope-reorder`), so these start at once and the short
# files even out the end, instead of one long file running alone while the other worker idles.
LONGEST_FILES = ("test_reference.py", "test_exactness.py", "test_swift.py", "test_sampling.py", "test_low_bit.py")


@pytest.fixture(autouse=True, scope="module")
def full_model_drafts_per_module():
    """After a module (its module-scoped fixtures included): every shared model's default draft is back to
    the full model, as the model fixtures load them."""
    yield
    for model in SHARED_MODELS:
        model.default_draft = ssd.Draft()


@pytest.fixture(autouse=True)
def default_drafts_per_test():
    """After a test: every shared model's default draft is what it was before the test (a module fixture's
    setting included)."""
    before = {model: model.default_draft for model in SHARED_MODELS}
    yield
    for model in SHARED_MODELS:
        model.default_draft = before.get(model, ssd.Draft())


def pytest_collection_modifyitems(items):
    """Collect the longest files first (a stable sort: every other file keeps its place, notebooks first)."""
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FILES)))


@pytest.fixture(scope="session")
def embedded():
    """(model, tokenizer): the embedded SmolLM2 in ssd's class, float32, drafting at full precision
    (tests of the low-bit draft set its precision themselves)."""
    model, tokenizer = ssd.load_model(dtype=torch.float32, device="cpu", draft_precision=None)
    return shared(model), tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    """The embedded model's tokenizer alone, for tests that need no model (seconds, not a model load)."""
    return AutoTokenizer.from_pretrained(embedded_checkpoint())


@pytest.fixture(scope="session")
def stock():
    """The same weights in stock transformers' LlamaForCausalLM, float32."""
    return AutoModelForCausalLM.from_pretrained(embedded_checkpoint(), dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def prompts() -> list[str]:
    """Real prompts (`helpers.fixed_prompts`): HumanEval, and CNN/DM and XSum 1-shot when the shared data is there."""
    folder = data_dir()
    if folder is None:
        return fixed_prompts("humaneval", 9)
    return (
        fixed_prompts("humaneval", 3)
        + fixed_prompts("cnndm", 3, folder, max_words=200)
        + fixed_prompts("xsum", 3, folder, max_words=200)
    )


@pytest.fixture(scope="session")
def base_tokens(embedded):
    """`base_tokens(input_ids, max_new_tokens)`: base (greedy, full-model) decoding's new tokens, no stop at EOS.
    Generated once per session for each prompt and length, however many tests compare against them
    (base decoding never reads the model's skip sets)."""
    model, tokenizer = embedded
    generated = {}

    def run(input_ids, max_new_tokens: int) -> list[int]:
        key = (tuple(input_ids[0].tolist()), max_new_tokens)
        if key not in generated:
            generated[key] = ssd.infer(model, tokenizer, input_ids, "base", max_new_tokens)["generate_ids"]
        return list(generated[key])

    return run


@pytest.fixture
def skip_layers(embedded):
    """Sets the embedded model's default skip set for one test (`default_drafts_per_test` clears it)."""
    model, _ = embedded
    return model.set_skip_layers


@pytest.fixture(scope="session")
def third_token_setting(embedded):
    """(model, input_ids, the exact distribution of the 3rd sampled token) for the sampled tests of the
    drafts that change between steps (SWIFT's and CLaSp's): computed once, however many use it."""
    model, tokenizer = embedded
    input_ids = tokenizer(SAMPLED_PROMPT, return_tensors="pt").input_ids
    return model, input_ids, exact_token_marginal(model, input_ids, SAMPLING, 3)
