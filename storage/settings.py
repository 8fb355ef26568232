"""Small key/value facts the process keeps between runs (e.g. the hash of the last synced commands)."""
from __future__ import annotations

from storage.db import Database


async def get(db: Database, key: str) -> str | None:
    row = await db.fetchone("SELECT value FROM settings WHERE key = ?", (key,))
    return str(row[0]) if row else None


async def put(db: Database, key: str, value: str) -> None:
    await db.execute(
        "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, value),
    )
