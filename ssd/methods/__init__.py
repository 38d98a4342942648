"""Drafting methods beyond the paper's self-draft, each a proposer (`ssd.core.proposers`): the gate,
prompt lookup, token trees, SWIFT, CLaSp and Token Recycling."""
