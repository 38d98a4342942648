"""Drafting methods beyond the paper's self-draft, each a proposer (`ssd.core.proposers`): the gate,
prompt lookup, token trees, SWIFT, CLaSp and Token Recycling. A method `generate` takes by name
registers itself when its module is imported (`ssd.methods.registry`); `import ssd` imports them."""
