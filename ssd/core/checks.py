"""Argument checks that settings across ssd share, each one error message for one rule."""

from __future__ import annotations


def check_count(name: str, value, minimum: int = 1) -> None:
    """`value` must be an integer (not a bool) of at least `minimum`: a count of steps, tokens or nodes."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
