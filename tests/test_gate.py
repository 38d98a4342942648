"""DraftGate: drafts while drafting's measured seconds per token beat plain steps', probes back with backoff."""

import pytest

from ssd.decoding import DraftGate


def run(gate: DraftGate, steps: int, draft_cost: float, draft_tokens: float) -> list[bool]:
    """Feed the gate a machine where a plain step takes 1 s for 1 token and a draft step `draft_cost` s."""
    choices = []
    for _ in range(steps):
        drafting = gate.draft_next()
        choices.append(drafting)
        gate.record(drafting, draft_tokens if drafting else 1, draft_cost if drafting else 1.0)
    return choices


def test_measures_a_plain_step_then_a_draft_step_first():
    assert run(DraftGate(), 2, draft_cost=2.0, draft_tokens=3)[:2] == [False, True]


def test_keeps_drafting_when_it_pays_with_a_plain_refresh_now_and_then():
    choices = run(DraftGate(refresh_interval=16), 200, draft_cost=1.5, draft_tokens=3)  # 2 tokens/s vs 1
    assert choices.count(True) > 0.9 * len(choices)
    assert False in choices[100:]  # plain steps keep being measured


def test_stops_drafting_when_it_does_not_pay_and_backs_off():
    gate = DraftGate(probe_interval=8)
    choices = run(gate, 200, draft_cost=2.5, draft_tokens=2)  # 0.8 tokens/s vs 1
    probes = [i for i, drafted in enumerate(choices) if drafted]
    assert len(probes) <= 6  # 1 measurement + probes at ~8, 16, 32, 64, 128 steps apart
    gaps = [b - a for a, b in zip(probes[1:], probes[2:])]
    assert gaps == sorted(gaps) and gaps[-1] > gaps[0]
    assert gate.interval > 8


def test_switches_when_the_draft_starts_paying():
    gate = DraftGate(probe_interval=4)
    run(gate, 30, draft_cost=2.5, draft_tokens=2)  # losing: plain steps
    later = run(gate, 100, draft_cost=1.0, draft_tokens=4)  # now 4 tokens/s
    assert later[-50:].count(True) > 40


@pytest.mark.parametrize("drafted", [True, False])
def test_smoothing_weights_recent_steps(drafted):
    gate = DraftGate(smoothing=0.5)
    gate.record(drafted, 2, 1.0)
    gate.record(drafted, 4, 3.0)
    assert gate.tokens[drafted] == 3 and gate.seconds[drafted] == 2.0
