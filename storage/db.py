"""One aiosqlite connection shared by the whole process, in WAL mode with foreign keys on.

aiosqlite runs every statement on one background thread, so a single connection is enough; the lock
makes sure that one coroutine's transaction never swallows another coroutine's statements.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from storage.migrations import migrate

Params = Sequence[Any] | dict[str, Any]
T = TypeVar("T")


def record(cls: type[T], row: aiosqlite.Row) -> T:
    """A dataclass built from a row whose column names are the dataclass's fields."""
    return cls(**{key: row[key] for key in row.keys()})


class Tx:
    """Statements inside one open transaction (see Database.transaction)."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Runs one statement; returns lastrowid for INSERTs, else the number of rows changed."""
        cursor = await self._conn.execute(sql, params)
        result = cursor.lastrowid if sql.lstrip().upper().startswith("INSERT") else cursor.rowcount
        await cursor.close()
        return result or 0

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        await self._conn.executemany(sql, rows)

    async def fetchone(self, sql: str, params: Params = ()) -> aiosqlite.Row | None:
        async with self._conn.execute(sql, params) as cursor:
            return await cursor.fetchone()

    async def fetchall(self, sql: str, params: Params = ()) -> list[aiosqlite.Row]:
        async with self._conn.execute(sql, params) as cursor:
            return list(await cursor.fetchall())


class Database:
    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self.path = path

    @classmethod
    async def open(cls, path: Path, *, target_version: int | None = None) -> Database:
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves instead of sqlite3's implicit ones.
        conn = await aiosqlite.connect(path, isolation_level=None, timeout=30)
        conn.row_factory = aiosqlite.Row
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA foreign_keys=ON")
            await conn.execute("PRAGMA synchronous=NORMAL")
            await migrate(conn, target_version)
        except BaseException:
            await conn.close()
            raise
        return cls(conn, path)

    async def close(self) -> None:
        async with self._lock:
            await self._conn.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """BEGIN IMMEDIATE … COMMIT, rolled back on any exception (cancellation included)."""
        async with self._lock:
            try:
                await self._to_the_end("BEGIN IMMEDIATE")
            except asyncio.CancelledError:
                await self._to_the_end("ROLLBACK")   # the BEGIN went through all the same
                raise
            try:
                yield Tx(self._conn)
            except BaseException:
                await self._to_the_end("ROLLBACK")
                raise
            await self._to_the_end("COMMIT")

    async def _to_the_end(self, sql: str) -> None:
        """Runs a transaction statement to its end even when the caller is cancelled meanwhile (then raises
        CancelledError after it): aiosqlite runs it in its thread regardless, and a BEGIN that lands after
        its caller gave up would leave the connection inside a transaction nobody ends."""
        task = asyncio.ensure_future(self._conn.execute(sql))
        cancelled = False
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                cancelled = True
        task.result()
        if cancelled:
            raise asyncio.CancelledError

    async def execute(self, sql: str, params: Params = ()) -> int:
        async with self.transaction() as tx:
            return await tx.execute(sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> aiosqlite.Row | None:
        async with self._lock:
            return await Tx(self._conn).fetchone(sql, params)

    async def fetchall(self, sql: str, params: Params = ()) -> list[aiosqlite.Row]:
        async with self._lock:
            return await Tx(self._conn).fetchall(sql, params)

    async def schema_version(self) -> int:
        row = await self.fetchone("PRAGMA user_version")
        return int(row[0]) if row else 0
