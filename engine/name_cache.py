"""Each member's project names in memory, for the project autocomplete: Discord shows nothing until it is
answered, and a database query can wait behind a running job's progress writes.

The engine keeps a member's entry current as it creates, renames and deletes their projects. Another
process working in the same data folder (the command line beside the bot) is not seen at once: an entry
is reloaded from the database once it is `ttl_s` old.
"""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable


class ProjectNames:
    def __init__(self, load: Callable[[int], Awaitable[list[str]]], ttl_s: float = 30.0) -> None:
        self._load = load
        self._ttl_s = ttl_s
        self._names: dict[int, tuple[float, list[str]]] = {}

    async def of(self, user_id: int) -> list[str]:
        cached = self._names.get(user_id)
        if cached is None or time.monotonic() - cached[0] > self._ttl_s:
            cached = (time.monotonic(), list(await self._load(user_id)))
            self._names[user_id] = cached
        return cached[1]

    def added(self, user_id: int, name: str) -> None:
        if user_id in self._names:
            loaded, names = self._names[user_id]
            self._names[user_id] = (loaded, sorted([*names, name], key=str.lower))   # as the database lists them

    def removed(self, user_id: int, name: str) -> None:
        if user_id in self._names:
            loaded, names = self._names[user_id]
            self._names[user_id] = (loaded, [n for n in names if n != name])

    def renamed(self, user_id: int, old: str, new: str) -> None:
        self.removed(user_id, old)
        self.added(user_id, new)


def matching(names: list[str], typed: str, limit: int) -> list[str]:
    """Names starting with what was typed first, then names containing it (case-insensitive)."""
    wanted = typed.strip().lower()
    starts = [name for name in names if name.lower().startswith(wanted)]
    contains = [name for name in names if wanted in name.lower() and name not in starts]
    return (starts + contains)[:limit]
