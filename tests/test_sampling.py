"""Self-speculative sampling keeps the full model's distribution, and the test can tell when it doesn't."""

import pytest
import torch

import ssd
import ssd.decoding
from helpers import ALPHA, accept_everything, chi_square_p_value
from ssd.decoding import DraftConfig, self_speculative_sample
from ssd.sampling import Sampling, logits_to_probs

SAMPLING = Sampling(temperature=1.0, top_k=6)
# The 2nd token is drafted: by the layer-skipping draft through the trimmed
# head, or (hybrid) copied after an n-gram match, with q one-hot.
DRAFTS = {
    "layer-skip": DraftConfig(max_step_draft=1, th_stop_draft=0.0, auto_th_stop_draft=False, gate=False, ngram_size=0),
    "hybrid": DraftConfig(max_step_draft=1, th_stop_draft=0.0, auto_th_stop_draft=False, gate=False),
}
PROMPTS = {
    "layer-skip": "The three most important inventions of the",
    # The first token is often one the prompt has ("mat", "floor"...), so the 2nd is looked up.
    "hybrid": "The cat sat on the mat. The dog sat on the",
}
TRIALS = 400
UPPER_HALF = (list(range(15, 29, 2)), list(range(16, 29, 2)))


@torch.no_grad()
def exact_second_token_marginal(model, input_ids) -> torch.Tensor:
    """P(2nd token = y) = sum over t1 of p(t1 | prompt) p(y | prompt, t1), from the full model."""
    cache = model.new_cache(input_ids.shape[1] + 1)
    p1 = logits_to_probs(model(input_ids, cache, 0)[0, -1], SAMPLING)
    marginal = torch.zeros_like(p1)
    for t1 in torch.nonzero(p1).flatten().tolist():
        p2 = logits_to_probs(model(torch.tensor([[t1]]), cache, input_ids.shape[1])[0, -1], SAMPLING)
        marginal += p1[t1] * p2
    return marginal


def second_token_p_value(model, input_ids, expected: torch.Tensor, draft: DraftConfig) -> float:
    """Chi-square p-value of sampled 2nd tokens (a drafted position) against the exact marginal."""
    generator = torch.Generator().manual_seed(1234)
    counts = torch.zeros_like(expected)
    looked_up = 0
    for _ in range(TRIALS):
        result = self_speculative_sample(model, input_ids, 3, None, draft, SAMPLING, generator)
        counts[result.tokens[1]] += 1
        looked_up += result.num_looked_up_tokens
    if draft.ngram_size:
        assert looked_up > TRIALS / 4, "the hybrid setting must exercise looked-up drafts"
    return chi_square_p_value(counts, expected, TRIALS)


@pytest.fixture(scope="module", params=sorted(DRAFTS))
def setting(embedded, request):
    model, tokenizer = embedded
    # A draft that often disagrees with the full model, but not wildly, so the
    # broken rule's error is a shifted distribution, not impossible tokens.
    model.set_skip_layers(*UPPER_HALF)
    input_ids = tokenizer(PROMPTS[request.param], return_tensors="pt").input_ids
    yield model, input_ids, exact_second_token_marginal(model, input_ids), DRAFTS[request.param]
    model.set_skip_layers([], [])


def test_sampled_distribution_matches_full_model(setting):
    model, input_ids, expected, draft = setting
    assert second_token_p_value(model, input_ids, expected, draft) > ALPHA


def test_broken_acceptance_rule_is_detected(setting, monkeypatch):
    """Accepting every draft samples the draft's distribution: the same test must fail."""
    model, input_ids, expected, draft = setting
    monkeypatch.setattr(ssd.decoding, "verify_drafts", accept_everything)
    assert second_token_p_value(model, input_ids, expected, draft) < ALPHA


def test_seed_reproduces_and_none_does_not_reseed(embedded):
    model, tokenizer = embedded
    kwargs = dict(generate_fn="base", max_new_tokens=12, do_sample=True, temperature=1.5)
    a = ssd.infer(model, tokenizer, "Once upon a time", seed=7, **kwargs)["generate_ids"]
    b = ssd.infer(model, tokenizer, "Once upon a time", seed=7, **kwargs)["generate_ids"]
    assert a == b
    c = ssd.infer(model, tokenizer, "Once upon a time", seed=None, **kwargs)["generate_ids"]
    d = ssd.infer(model, tokenizer, "Once upon a time", seed=None, **kwargs)["generate_ids"]
    assert c != d


def test_top_k_and_top_p_filters():
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    probs = logits_to_probs(logits, Sampling(top_k=2))
    assert (probs[2:] == 0).all() and torch.isclose(probs.sum(), torch.tensor(1.0))
    full = torch.softmax(logits, -1)
    # top_p just above the first token's mass keeps exactly two tokens.
    probs = logits_to_probs(logits, Sampling(top_p=float(full[0]) + 0.01))
    assert (probs > 0).sum() == 2
    assert (logits_to_probs(logits, Sampling(top_p=0.01)) > 0).sum() == 1


@pytest.mark.parametrize("kwargs", [{"temperature": 0.0}, {"top_k": -1}, {"top_p": 0.0}, {"top_p": 1.5}])
def test_bad_sampling_settings(kwargs):
    with pytest.raises(ValueError):
        Sampling(**kwargs)
