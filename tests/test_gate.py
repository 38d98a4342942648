"""DraftGate: runs the kind of step with the most measured tokens per second, probes the others with backoff."""

import pytest

from ssd.core.proposers import Outcome, Proposal
from ssd.methods.gate import DraftGate
from ssd.methods.lookup import NgramIndex, accepted_in_full, trie
from ssd.methods.tree import TokenTree

PLAIN_DRAFT = ["plain", "draft"]


def run(gate: DraftGate, steps: int, machine: dict, kinds=PLAIN_DRAFT) -> list:
    """Feed the gate a machine: `machine[kind]` = (tokens committed, seconds) of one step of that kind."""
    choices = []
    for _ in range(steps):
        kind = gate.choose(kinds)
        choices.append(kind)
        gate.record(kind, kinds, *machine[kind])
    return choices


def test_measures_each_kind_once_first():
    machine = {"plain": (1, 1.0), "draft": (3, 2.0)}
    assert run(DraftGate(), 2, machine) == ["plain", "draft"]


def test_keeps_drafting_when_it_pays_and_still_measures_plain_steps():
    choices = run(DraftGate(max_interval=32), 200, {"plain": (1, 1.0), "draft": (3, 1.5)})  # 2 tokens/s vs 1
    assert choices.count("draft") > 0.9 * len(choices)
    assert "plain" in choices[100:]  # never more than max_interval steps apart


def test_stops_drafting_when_it_does_not_pay_and_backs_off():
    gate = DraftGate(probe_interval=8, max_interval=1000)
    choices = run(gate, 200, {"plain": (1, 1.0), "draft": (2, 2.5)})  # 0.8 tokens/s vs 1
    probes = [i for i, kind in enumerate(choices) if kind == "draft"]
    assert len(probes) <= 6  # 1 measurement + probes ~8, 16, 32, 64, 128 steps apart
    gaps = [b - a for a, b in zip(probes[1:], probes[2:])]
    assert gaps == sorted(gaps) and gaps[-1] > gaps[0]
    assert gate.interval["draft"] > 8


def test_backoff_is_capped():
    gate = DraftGate(probe_interval=2, max_interval=8)
    choices = run(gate, 300, {"plain": (1, 1.0), "draft": (2, 2.5)})
    probes = [i for i, kind in enumerate(choices) if kind == "draft"]
    assert max(b - a for a, b in zip(probes, probes[1:])) <= 9
    assert gate.interval["draft"] == 8


def test_switches_when_the_draft_starts_paying():
    gate = DraftGate(probe_interval=4)
    run(gate, 30, {"plain": (1, 1.0), "draft": (2, 2.5)})  # losing: plain steps
    later = run(gate, 100, {"plain": (1, 1.0), "draft": (4, 1.0)})  # now 4 tokens/s
    assert later[-50:].count("draft") > 40


def test_a_losing_lookup_falls_back_to_the_best_other_kind():
    """Where verifying a long lookup costs more than its accepted tokens bring (1-token matches in float32)."""
    kinds = ["plain", "draft", ("lookup", 1)]
    machine = {"plain": (1, 1.0), "draft": (3, 2.0), ("lookup", 1): (1.5, 2.0)}
    choices = run(DraftGate(), 200, machine, kinds)
    assert choices[100:].count("draft") > 0.9 * 100
    assert ("lookup", 1) in choices[100:]  # still probed


def test_a_paying_lookup_wins_while_another_match_length_loses():
    gate = DraftGate()
    machine = {"plain": (1, 1.0), "draft": (1.5, 2.0), ("lookup", 1): (1.2, 1.5), ("lookup", 3): (6, 1.5)}
    for kinds in (["plain", "draft", ("lookup", 1)], ["plain", "draft", ("lookup", 3)]) * 50:
        gate.record(kind := gate.choose(kinds), kinds, *machine[kind])
    assert gate.choose(["plain", "draft", ("lookup", 3)]) == ("lookup", 3)
    assert gate.rate(("lookup", 1)) < gate.rate("plain")


def test_a_draft_that_holds_off_lookups_loses_to_plain_steps():
    """A 12-token draft beats a plain step for step (1.2 vs 1 token/s), but the text matches again
    right after either (two 10-token lookups), so plain steps, which reach the lookups sooner, win."""
    gate = DraftGate()
    machine = {"plain": (1, 1.0), "draft": (12, 10.0), ("lookup", 3): (10, 1.0)}
    choices, lookups_left = [], 0
    for _ in range(300):
        kinds = ["plain", "draft"] + ([("lookup", 3)] if lookups_left else [])
        kind = gate.choose(kinds)
        gate.record(kind, kinds, *machine[kind])
        lookups_left = lookups_left - 1 if kind == ("lookup", 3) else 2
        choices.append(kind)
    assert choices[100:].count("draft") < 10
    assert gate.best(["plain", "draft"]) == "plain"


@pytest.mark.parametrize("kind", ["plain", "draft"])
def test_smoothing_weights_recent_steps(kind):
    gate = DraftGate(smoothing=0.5)
    gate.record(kind, PLAIN_DRAFT, 2, 1.0)
    gate.record(kind, PLAIN_DRAFT, 4, 3.0)
    assert gate.tokens[kind] == 3 and gate.seconds[kind] == 2.0


def test_ngram_index_proposes_after_the_longest_match_and_says_its_length():
    index = NgramIndex([5, 6, 7, 8, 1, 6, 7, 9, 2], max_n=3)
    assert index.propose(4) == ([], 0)  # 2 never occurred before
    index.extend([6, 7])  # ... 6, 7 occurred twice: the latest continuation wins
    assert index.propose(4) == ([9, 2, 6, 7], 2)
    index.extend([9])
    assert index.propose(2) == ([2, 6], 3)
    assert NgramIndex([5, 6, 7, 8, 1, 6], max_n=3, min_n=2).propose(4) == ([], 0)  # only a 1-token match


def test_forget_measures_the_kind_afresh():
    gate = DraftGate(probe_interval=8)
    run(gate, 40, {"plain": (1, 1.0), "draft": (2, 2.5)})  # the draft loses and backs off
    assert gate.choose(PLAIN_DRAFT) == "plain"
    gate.forget("draft")  # e.g. the skip set changed
    assert "draft" not in gate.seconds and gate.choose(PLAIN_DRAFT) == "draft"
    gate.forget("lookup-never-seen")  # forgetting what was never measured is harmless


def test_new_sequence_closes_the_episode():
    gate = DraftGate()
    kinds = ["plain", "draft", ("lookup", 1)]
    gate.record("draft", kinds, 2, 1.0)
    gate.new_sequence()
    gate.record(("lookup", 1), kinds, 5, 1.0)  # the next generation's lookup is no part of that draft's episode
    assert (gate.episode_tokens["draft"], gate.episode_seconds["draft"]) == (2, 1.0)


def test_ngram_index_keeps_a_continuation_per_next_token_latest_first():
    tokens = [1, 2, 3, 1, 2, 4, 1, 2, 3, 1, 2]  # "1 2" went on with 3, 4, then 3 again
    assert NgramIndex(tokens, max_n=2, ways=2).propose_all(3) == ([[3, 1, 2], [4, 1, 2]], 2)
    assert NgramIndex(tokens, max_n=2, ways=3).propose_all(3) == ([[3, 1, 2], [4, 1, 2]], 2)  # two next tokens only
    assert NgramIndex(tokens, max_n=2).propose_all(3) == ([[3, 1, 2]], 2)  # one way: the latest, as propose
    assert NgramIndex(tokens, max_n=2).propose(3) == ([3, 1, 2], 2)


def test_trie_shares_prefixes_and_puts_the_first_chain_first():
    tokens, parents = trie([[3, 1, 2], [4, 1, 2], [3, 1, 5]])
    assert tokens == [3, 1, 2, 4, 1, 2, 5]
    assert parents == [-1, 0, 1, -1, 3, 4, 1]
    assert trie([[7, 8]]) == ([7, 8], [-1, 0])


def test_a_lookup_counts_as_copied_when_a_whole_continuation_is_accepted():
    """`short_lookup` lifts after lookups accepted in full: a chain's every token, or a tree's path to a leaf."""
    tree = Proposal([3, 1, 4], tree=TokenTree([-1, 0, -1]))  # continuations 3 1 and 4
    assert accepted_in_full(Outcome(("lookup", 2), tree, 1, [4, 9], 0.0, path=[2]))
    assert accepted_in_full(Outcome(("lookup", 2), tree, 2, [3, 1, 9], 0.0, path=[0, 1]))
    assert not accepted_in_full(Outcome(("lookup", 2), tree, 1, [3, 9], 0.0, path=[0]))
    assert not accepted_in_full(Outcome(("lookup", 2), tree, 0, [9], 0.0, path=[]))
    chain = Proposal([3, 1])
    assert accepted_in_full(Outcome(("lookup", 2), chain, 2, [3, 1, 9], 0.0))
    assert not accepted_in_full(Outcome(("lookup", 2), chain, 1, [3, 9], 0.0))
