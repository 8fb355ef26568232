"""Argument types of the command line that need more than argparse's own: numbers the database can hold."""
from __future__ import annotations

import argparse
from collections.abc import Callable

_SQLITE_MAX = 2**63 - 1   # SQLite's largest integer, and the largest Discord id


def _number(what: str, low: int) -> Callable[[str], int]:
    """An argparse type for a whole number from `low` to SQLite's largest: one clear line otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a whole number, got {text!r}") from None
        if not low <= value <= _SQLITE_MAX:
            raise argparse.ArgumentTypeError(f"{what} must be {low} to {_SQLITE_MAX}, got {text}")
        return value
    return parse


USER_ID = _number("a Discord user id", 0)
ROW_ID = _number("an id", 1)
