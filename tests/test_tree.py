"""Token trees: one pass scores every node as a step after its path would, the accepted path's keys and
values land where step-by-step decoding puts them, and decoding with trees equals base."""

import random

import pytest
import torch
from helpers import NEAR_TIE_FLOAT32, assert_same_tokens, stock_greedy
from test_cache import poison_beyond

import ssd
from ssd.core.decoding import prefill, speculative_decode
from ssd.core.proposers import Outcome, Proposal, Step
from ssd.core.sampling import Sampling
from ssd.core.self_draft import draft_tokens
from ssd.methods.hybrid import DraftConfig, hybrid_proposers
from ssd.methods.recycling import Recycler
from ssd.methods.tree import TokenTree, accept_path, ancestor_mask, keep_path


def test_ancestor_mask_and_greedy_path():
    #       root
    #      /    \
    #    0:5    1:6
    #    /  \     \
    #  2:7  3:8   4:9
    parents = [-1, -1, 0, 0, 1]
    tokens = [5, 6, 7, 8, 9]
    mask = ancestor_mask(parents)
    assert mask.tolist()[4] == [True, True, False, False, True, False]  # node 3 (row 4): root, node 0, itself
    assert mask.tolist()[5] == [True, False, True, False, False, True]
    assert torch.equal(ancestor_mask([-1, 0, 1]), torch.ones(4, 4, dtype=torch.bool).tril())  # a chain is causal
    # targets[r]: the argmax after row r (row 0 the root): root -> 6, then node 1 -> 9, then node 4 -> 3
    assert accept_path([6, 0, 9, 0, 0, 3], tokens, parents) == ([1, 4], 3)
    assert accept_path([5, 8, 0, 0, 2, 0], tokens, parents) == ([0, 3], 2)
    assert accept_path([4, 0, 0, 0, 0, 0], tokens, parents) == ([], 4)


@pytest.mark.parametrize("parents", [[0], [-1, 1], [-2], [-1, -1, 5]])
def test_bad_trees_are_refused(parents):
    with pytest.raises(ValueError, match="parent"):
        Proposal(list(range(len(parents))), tree=TokenTree(parents))
    with pytest.raises(ValueError, match="one parent per token"):
        Proposal([1, 2], tree=TokenTree([-1]))


def random_tree(path_tokens: list[int], seed: int, vocab: int) -> tuple[list[int], list[int], list[int]]:
    """A tree holding `path_tokens` as one path, with random siblings (some with children of their own)
    before each path node, so that the path's slots lie apart. Returns tokens, parents and the path."""
    rng = random.Random(seed)
    tokens, parents, path = [], [], []
    parent = -1
    for token in path_tokens:
        for _ in range(rng.randint(0, 3)):
            tokens.append(rng.randrange(vocab))
            parents.append(parent)
            if rng.random() < 0.5:
                tokens.append(rng.randrange(vocab))
                parents.append(len(tokens) - 2)
        tokens.append(token)
        parents.append(parent)
        parent = len(tokens) - 1
        path.append(parent)
    return tokens, parents, path


@torch.no_grad()
def test_tree_pass_scores_each_path_as_the_whole_sequence(embedded, prompts):
    """float32: a tree node's logits equal a prefill's over the prompt and its path; after `keep_path`
    the cache below the new committed length equals that prefill's; nothing beyond the committed
    length (poisoned with NaN) is read."""
    model, tokenizer = embedded
    input_ids = tokenizer(prompts[0], return_tensors="pt").input_ids
    committed = input_ids.shape[1]
    cache = model.new_cache(committed + 40)
    last = int(prefill(model, input_ids, cache).argmax())
    for seed in range(3):
        path_tokens = [random.Random(seed).randrange(1000) for _ in range(5)]
        tokens, parents, path = random_tree(path_tokens, seed, model.config.vocab_size)
        poison_beyond(cache, committed)
        logits = model(torch.tensor([[last, *tokens]]), cache, committed, tree=ancestor_mask(parents))[0]
        assert torch.isfinite(logits).all(), "the tree pass read a stale key or value"
        sequence = torch.cat([input_ids[0], torch.tensor([last, *path_tokens])])[None]
        reference = model.new_cache(sequence.shape[1])
        full = model(sequence, reference, 0)[0, committed:]
        torch.testing.assert_close(logits[[0] + [i + 1 for i in path]], full, atol=1e-4, rtol=1e-4)
        keep_path(cache, committed, path)
        end = committed + 1 + len(path)
        for layer in range(model.num_layers):
            torch.testing.assert_close(cache.keys[layer][:, :, :end], reference.keys[layer][:, :, :end], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(cache.values[layer][:, :, :end], reference.values[layer][:, :, :end], atol=1e-5, rtol=1e-4)


def test_recycled_trees_equal_base_and_stock_generate(embedded, stock, prompts, base_tokens):
    """float32: trees of recycled candidates (alone: a plain step where the table has no row) give
    base's tokens and stock transformers' greedy ones, and some trees are accepted past their root."""
    model, tokenizer = embedded
    accepted = 0
    for prompt in prompts[:2]:
        input_ids = tokenizer(prompt, return_tensors="pt").input_ids
        recycler = Recycler(tree_sizes=(12,))
        result = speculative_decode(model, input_ids, 48, None, DraftConfig.of(gate=False, ngram_size=0).self_draft, None, None,
                                    proposers=[recycler])
        accepted += recycler.accepted
        assert_same_tokens(base_tokens(input_ids, 48), result.tokens, model, input_ids, NEAR_TIE_FLOAT32, "recycled trees")
        assert_same_tokens(stock_greedy(stock, input_ids, 48), result.tokens, model, input_ids, NEAR_TIE_FLOAT32,
                           "recycled trees vs stock generate")
    assert accepted > 0


class TreeCount:
    """Offers nothing; counts the steps whose proposal was a tree."""

    def __init__(self):
        self.trees = 0

    def offer(self, step: Step):
        return []

    def observe(self, outcome: Outcome, step: Step) -> None:
        self.trees += outcome.path is not None


def test_lookup_and_draft_trees_equal_base_and_stock_generate(embedded, stock, prompts, base_tokens):
    """float32, gate off (each kind runs whenever offered): several lookup continuations, and the
    self-draft's runners-up where it stopped (by top probability, and by margin), verified as trees,
    give base's tokens and stock transformers' greedy ones."""
    model, tokenizer = embedded
    settings = [dict(lookup_ways=3), dict(branches=2), dict(branches=2, exit_margin=0.5)]
    counts = [TreeCount() for _ in settings]
    for prompt in prompts[:2]:
        input_ids = tokenizer(prompt, return_tensors="pt").input_ids
        base, stock_tokens = base_tokens(input_ids, 48), stock_greedy(stock, input_ids, 48)
        for options, count in zip(settings, counts):
            config = DraftConfig.of(gate=False, **options)
            result = speculative_decode(model, input_ids, 48, None, config.self_draft, None, None,
                                        proposers=hybrid_proposers(model, config) + [count])
            assert_same_tokens(base, result.tokens, model, input_ids, NEAR_TIE_FLOAT32, str(options))
            assert_same_tokens(stock_tokens, result.tokens, model, input_ids, NEAR_TIE_FLOAT32, f"{options} vs stock generate")
    assert all(count.trees > 0 for count in counts)


def test_draft_stops_by_margin_and_names_its_runners_up(embedded, prompts):
    """`draft_tokens`: with `margin`, the exit compares the draft's top logit with its runner-up's (never
    under 0: the draft runs to its length; under infinity: one token); where it stopped under the
    threshold it names its next likeliest tokens there, none where it ran to its length."""
    model, tokenizer = embedded
    draft = model.prepare_draft(model.default_draft)
    input_ids = tokenizer(prompts[0], return_tensors="pt").input_ids
    committed = input_ids.shape[1]
    cache = model.new_cache(committed + 8)
    last = int(prefill(model, input_ids, cache).argmax())

    def run(threshold: float, alternatives: int):
        return draft_tokens(model, draft, cache, last, committed, 6, threshold, None, None, None, alternatives, True)

    tokens, _, others = run(0.0, 3)
    assert len(tokens) == 6 and others == []
    tokens, _, others = run(float("inf"), 3)
    with torch.no_grad():
        ranked = model(torch.tensor([[last]]), cache, committed, draft=draft)[0, -1].topk(4).indices.tolist()
    assert [*tokens, *others] == ranked
    assert run(float("inf"), 0)[2] == []


def test_acceptance_signals_count_every_drafted_token(embedded, prompts):
    """`ssd.tools.acceptance`: one signal per new token but the first; the full model as its own draft agrees
    with base at every one (each draft pass predicts the token base wrote after its input); the bins
    count every signal once."""
    from ssd.tools.acceptance import MARGIN_BINS, PROBABILITY_BINS, by_bins, draft_signals

    model, tokenizer = embedded
    input_ids = tokenizer(prompts[0], return_tensors="pt").input_ids
    full = draft_signals(model, input_ids, 12, ssd.Draft())
    assert len(full) == 11 and all(s.accepted for s in full)
    signals = draft_signals(model, input_ids, 12, model.prepare_draft(model.default_draft))
    for field, bins in (("probability", PROBABILITY_BINS), ("margin", MARGIN_BINS)):
        rows = by_bins(signals, field, bins)
        assert sum(r["tokens"] for r in rows) == len(signals) == 11
        assert sum(r["accepted"] * r["tokens"] for r in rows if r["tokens"]) == pytest.approx(sum(s.accepted for s in signals))


class FixedTree:
    """A proposer that offers one tree every step (its tokens need not be right)."""

    def offer(self, step: Step):
        return [("tree", 2)] if step.room >= 1 else []

    def propose(self, kind, step: Step) -> Proposal:
        return Proposal([1, 2], tree=TokenTree([-1, -1]))

    def observe(self, outcome: Outcome, step: Step) -> None:
        pass


def test_trees_are_verified_greedily_only(embedded, prompts):
    model, tokenizer = embedded
    input_ids = tokenizer(prompts[0], return_tensors="pt").input_ids
    with pytest.raises(ValueError, match="greedily only"):
        speculative_decode(model, input_ids, 4, None, DraftConfig.of(gate=False, ngram_size=0).self_draft, Sampling(), None,
                           proposers=[FixedTree()])
    greedy = speculative_decode(model, input_ids, 4, None, DraftConfig.of(gate=False, ngram_size=0).self_draft, None, None,
                                proposers=[FixedTree()])
    assert greedy.num_verifications >= 1 and len(greedy.tokens) == 4
    assert ssd.generate(model, input_ids, method="base", max_new_tokens=4, eos_token_id=[])[0, input_ids.shape[1]:].tolist() == greedy.tokens


def test_breakdown_accounts_for_the_wall_time(embedded, prompts):
    """`ssd.tools.breakdown`: every step is logged under its kind, trees apart, and the kinds' shares of the
    time and the rest add up to the whole."""
    from ssd.tools.breakdown import breakdown

    model, tokenizer = embedded
    input_ids = tokenizer(prompts[0], return_tensors="pt").input_ids
    table, extra = breakdown(model, [input_ids], "recycling", 24)
    assert abs(sum(row["share_of_time"] for row in table) - 1) < 1e-6
    steps = sum(row["steps"] for row in table[:-1])
    assert 24 / steps == pytest.approx(extra["summary"]["tokens_per_verification"])
    assert {"plain"} <= {row["kind"] for row in table}
    assert extra["verification_ms_by_rows"][1] > 0
