"""What a method may spend on choosing its draft: a share of what drafting saved on the same input.

SWIFT's optimisation and CLaSp's selection cost time that plain decoding would not. Each is paid for
out of what its drafted steps saved over plain steps: it runs only while what it has spent is at most
`share` times what was saved, so the first runs on credit and spending overruns by one run at most.
Where drafting pays, choosing runs on; where it does not, it stops spending.
"""

from __future__ import annotations

from dataclasses import dataclass


def check_share(name: str, share: float | None) -> None:
    """A budget's share: a number >= 0, or None for no budget."""
    if share is not None and (isinstance(share, bool) or not isinstance(share, (int, float)) or share < 0):
        raise ValueError(f"{name} must be a number >= 0 or None, got {share!r}")


@dataclass
class Budget:
    """`spent` and `saved` in one unit (wall seconds, or model passes when sampling); `share`: None
    lets everything run."""

    share: float | None
    spent: float = 0.0
    saved: float = 0.0

    def allows(self) -> bool:
        return self.share is None or self.spent <= self.share * self.saved

    def spend(self, cost: float) -> None:
        self.spent += cost

    def credit(self, gained: float, cost: float) -> None:
        """A drafted step did `gained` worth of plain steps for `cost` (a losing step takes back what it lost)."""
        self.saved += gained - cost
