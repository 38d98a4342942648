"""Self-speculative sampling keeps the full model's distribution, and the test can tell when it doesn't."""

import pytest
import torch
from helpers import ALPHA, SAMPLING, accept_everything, chi_square_p_value, exact_token_marginal, sample_counts

import ssd
import ssd.core.decoding
from ssd.core.decoding import verify_drafts
from ssd.core.sampling import Sampling, logits_to_probs, residual
from ssd.core.skip_layers import hand_made_set
from ssd.methods.hybrid import DraftConfig, hybrid_generate

# The 2nd token is drafted: by the self-draft (upper-half sub-layers skipped, int4
# copies of the weights, the trimmed head), or (hybrid) copied after an n-gram
# match, with q one-hot. (The full-precision layer-skipping draft samples through
# the same code; test_swift's chi-square tests run it.)
ALONE = DraftConfig.of(max_step_draft=1, th_stop_draft=0.0, auto_th_stop_draft=False, gate=False, ngram_size=0)
DRAFTS = {
    "int4 layer-skip": ALONE,
    "hybrid": DraftConfig.of(max_step_draft=1, th_stop_draft=0.0, auto_th_stop_draft=False, gate=False),
}
PRECISIONS = {"int4 layer-skip": "int4"}
PROMPTS = {
    "int4 layer-skip": "The three most important inventions of the",
    # The first token is often one the prompt has ("mat", "floor"...), so the 2nd is looked up.
    "hybrid": "The cat sat on the mat. The dog sat on the",
}
# Samples per chi-square test (each a 3-token generation, ~0.3 s). The broken rules below must fail
# it: from the exact distributions (noncentral chi-square over the test's pooled bins) they are
# caught at 100 trials with probability over 0.999 on the chi-square alone (computed for the
# full-precision layer-skipping draft and hybrid: noncentrality ~60-70 for the |p - q| residual,
# 230+ for accepting every draft), and they also sample tokens the full model forbids. The negative
# controls run half as many trials and still fail outright. Measured with seed 1234 on an AVX2 EPYC:
# at 50 trials the broken rules sample 5-23 tokens the full model forbids (p = 0) in both settings
# (sampling stops at the first of them: the verdict is then settled).
# The correct sampler at 100 trials: hybrid p = 1.0; int4 layer-skip p = 0.0011, a draw from the
# lowest tenth of a percent that this seed happens to give there: at 300 trials, seeds 1 and 2 give
# p = 0.75 and 0.26.
TRIALS = 100
CONTROL_TRIALS = 50  # the broken rules fail with half the trials too
UPPER_HALF = hand_made_set(30)  # the embedded model has 30 layers


def second_token_p_value(model, input_ids, expected: torch.Tensor, draft: DraftConfig, trials: int = TRIALS) -> float:
    """Chi-square p-value of sampled 2nd tokens (a drafted position) against the exact marginal."""
    generator = torch.Generator().manual_seed(1234)
    looked_up = 0

    def draw() -> int:
        nonlocal looked_up
        result = hybrid_generate(model, input_ids, 3, None, draft, SAMPLING, generator)
        looked_up += result.num_looked_up_tokens
        return result.tokens[1]

    counts = sample_counts(draw, expected, trials)
    if draft.lookup.ngram_size and counts.sum() == trials:
        assert looked_up > trials / 4, "the hybrid setting must exercise looked-up drafts"
    p_value = chi_square_p_value(counts, expected, trials)
    forbidden = "stopped at a token the full model forbids" if counts[expected == 0].any() else "no forbidden token"
    print(f"p-value {p_value:.3g} after {int(counts.sum())} of {trials} trials ({forbidden})")
    return p_value


@pytest.fixture(scope="module", params=sorted(DRAFTS))
def setting(embedded, request):
    model, tokenizer = embedded
    # A draft that often disagrees with the full model, but not wildly, so the
    # broken rule's error is a shifted distribution, not impossible tokens.
    model.set_skip_layers(*UPPER_HALF)
    model.set_draft_precision(PRECISIONS.get(request.param))
    input_ids = tokenizer(PROMPTS[request.param], return_tensors="pt").input_ids
    return model, input_ids, exact_token_marginal(model, input_ids, SAMPLING, 2), DRAFTS[request.param]


def test_sampled_distribution_matches_full_model(setting):
    model, input_ids, expected, draft = setting
    assert second_token_p_value(model, input_ids, expected, draft) > ALPHA


def test_broken_acceptance_rule_is_detected(setting, monkeypatch):
    """Accepting every draft samples the draft's distribution: the same test must fail."""
    model, input_ids, expected, draft = setting
    monkeypatch.setattr(ssd.core.decoding, "verify_drafts", accept_everything)
    assert second_token_p_value(model, input_ids, expected, draft, CONTROL_TRIALS) < ALPHA


def abs_residual(p, q):
    """A broken residual: |p - q| renormalised (the clamp forgotten). After a rejection it samples
    where the draft over-proposed too, and the 2nd token follows (p + q) / 2, not p."""
    rest = (p - q).abs()
    return rest / rest.sum()


def test_wrong_residual_is_detected(setting, monkeypatch):
    """A rejected draft resampled from the wrong distribution: the same test must fail.

    (Resampling from p itself, without subtracting q, is biased too, but only by min(p, q) - beta p:
    noncentrality ~0.04 per trial (layer-skip) and ~0.015 (hybrid), caught at 400 trials with
    probability 0.43 and 0.11; measured p = 0.19 and 0.91 at 100 trials, 0.45 (hybrid) at 400.
    The unit test below pins residual down exactly instead.)"""
    model, input_ids, expected, draft = setting
    monkeypatch.setattr(ssd.core.decoding, "residual", abs_residual)
    assert second_token_p_value(model, input_ids, expected, draft, CONTROL_TRIALS) < ALPHA


def test_residual_is_the_normalised_positive_part():
    p = torch.tensor([0.5, 0.3, 0.2, 0.0])
    q = torch.tensor([0.2, 0.5, 0.1, 0.2])
    torch.testing.assert_close(residual(p, q), torch.tensor([0.3, 0.0, 0.1, 0.0]) / 0.4)
    # A looked-up draft (q one-hot): p without the drafted token.
    torch.testing.assert_close(residual(p, torch.tensor([1.0, 0, 0, 0])), torch.tensor([0.0, 0.6, 0.4, 0.0]))
    # p == q (a rejection is then impossible, but rounding may still reject): p itself, not 0/0.
    same = torch.softmax(torch.tensor([2.0, 1.0, -1.0, 0.5]), -1)
    assert torch.equal(residual(same, same.clone()), same)
    assert torch.isfinite(residual(same, same)).all()


def test_certain_drafts_verify_as_one_hot_ones():
    """Looked-up drafts pass no `q` (None: certain); they must be verified exactly as drafts whose `q` is
    one-hot at the drafted token: same random numbers, same acceptances, same resampled token."""
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    drafts = logits[:3].argmax(dim=-1).tolist()  # each accepted with its probability under p, about 0.2-0.4
    one_hot = torch.nn.functional.one_hot(torch.tensor(drafts), 50).float()
    outcomes = set()
    for seed in range(40):
        certain = verify_drafts(logits, drafts, None, SAMPLING, torch.Generator().manual_seed(seed))
        explicit = verify_drafts(logits, drafts, one_hot, SAMPLING, torch.Generator().manual_seed(seed))
        assert certain == explicit
        outcomes.add(certain[0])
    assert len(outcomes) > 1  # both acceptances and rejections were exercised


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
