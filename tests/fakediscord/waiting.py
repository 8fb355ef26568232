"""Bounded waits for "the first item that matches", without polling or sleeping."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Iterable

Predicate = Callable[[Any], bool]


def matches(predicate: Predicate, item: Any) -> bool:
    # A predicate such as `lambda m: m["embeds"][0]["title"] == "x"` meets messages without embeds too;
    # treat a lookup failure as "not this one" rather than an error.
    try:
        return bool(predicate(item))
    except (LookupError, TypeError):
        return False


class Waiters:
    def __init__(self) -> None:
        self._pending: list[tuple[Predicate, asyncio.Future[Any]]] = []

    async def wait(
        self, predicate: Predicate, current: Iterable[Any], timeout: float, describe: Callable[[], str]
    ) -> Any:
        """The first of ``current`` that matches, else the first later ``notify``-ed item that does."""
        for item in current:
            if matches(predicate, item):
                return item
        entry = (predicate, asyncio.get_running_loop().create_future())
        self._pending.append(entry)
        try:
            return await asyncio.wait_for(entry[1], timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"nothing matched within {timeout} s; {describe()}") from None
        finally:
            self._pending.remove(entry)

    def notify(self, item: Any) -> None:
        for predicate, future in self._pending:
            if not future.done() and matches(predicate, item):
                future.set_result(item)
