"""The proposer protocol: a drafting method added in one file, through the documented path
(docs/design.md, "Adding a drafting method"), decodes exactly as base."""

import pytest
import torch
from helpers import tiny_llama

import ssd
import ssd.generation
from ssd.tools.bench import parse_args


class Echo:
    """A toy proposer: the last token, repeated (right on runs of a token, wrong elsewhere)."""

    kind = "echo"

    def __init__(self, length: int = 3):
        self.length, self.outcomes = length, []

    def offer(self, step: ssd.Step) -> list:
        return [self.kind] if step.room > 0 else []

    def propose(self, kind, step: ssd.Step) -> ssd.Proposal:
        return ssd.Proposal([step.sequence[-1]] * min(self.length, step.room))

    def observe(self, outcome: ssd.Outcome, step: ssd.Step) -> None:
        if outcome.kind == self.kind:
            self.outcomes.append(outcome)


@pytest.fixture(scope="module")
def echo_method():
    made = []

    def proposers(model, config, draft):
        made.append(Echo())
        return [made[-1]]

    ssd.register_method("echo", proposers, samples=False)
    yield made
    ssd.generation.DRAFTING_METHODS.pop("echo")  # other test files in this worker see the shipped methods


@pytest.mark.parametrize("gate", [True, False])
def test_a_registered_toy_proposer_decodes_as_base(embedded, prompts, echo_method, gate):
    model, tokenizer = embedded
    input_ids = tokenizer(prompts[2], return_tensors="pt").input_ids
    base = ssd.generate(model, input_ids, method="base", max_new_tokens=32, eos_token_id=[])
    out = ssd.generate(model, input_ids, method="echo", max_new_tokens=32, eos_token_id=[], gate=gate,
                       return_dict_in_generate=True)
    assert torch.equal(out.sequences, base)
    echo = echo_method[-1]
    assert echo.outcomes, "the gate offered the toy's kind and it ran"
    assert out.num_drafted_tokens == sum(len(o.proposal.tokens) for o in echo.outcomes)
    assert out.num_accepted_tokens == sum(o.accepted for o in echo.outcomes)
    if not gate:  # the last kind offered runs at every step with room
        assert len(echo.outcomes) == out.num_verifications - 1


def test_methods_are_listed_and_checked(echo_method):
    assert ssd.method_names()[:2] == ("base", "hybrid") and {"essg", "sss", "echo"} <= set(ssd.method_names())
    assert parse_args(["--methods", "echo", "base"]).methods == ["echo", "base"], "the bench takes a registered method"
    with pytest.raises(ValueError, match="other than 'base' and 'swift'"):
        ssd.register_method("base", lambda model, config, draft: [])
    with pytest.raises(ValueError, match="echo is greedy"):
        ssd.generate(tiny_llama(), torch.tensor([[1, 2]]), method="echo", do_sample=True, max_new_tokens=2)


def test_a_method_takes_a_draft_value_and_leaves_the_model_as_it_was(embedded, prompts):
    model, tokenizer = embedded
    input_ids = tokenizer(prompts[1], return_tensors="pt").input_ids
    base = ssd.generate(model, input_ids, method="base", max_new_tokens=24, eos_token_id=[])
    draft = ssd.Draft.skipping(range(10, 20), range(12, 22))
    out = ssd.generate(model, input_ids, max_new_tokens=24, eos_token_id=[], draft=draft, ngram_size=0, gate=False,
                       return_dict_in_generate=True)
    assert torch.equal(out.sequences, base) and out.num_drafted_tokens > 0
    assert model.default_draft == ssd.Draft(), "a draft= call leaves the model's default draft alone"
    with pytest.raises(ValueError, match="draft= is for a drafting method"):
        ssd.generate(model, input_ids, method="base", max_new_tokens=4, draft=draft)
    with pytest.raises(ValueError, match=r"attention skip layers \[30\]"):
        ssd.generate(model, input_ids, max_new_tokens=4, draft=ssd.Draft.skipping([30]))
