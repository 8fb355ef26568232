from __future__ import annotations

import time

from storage.db import Tx


async def upsert_user(tx: Tx, user_id: int, name: str) -> None:
    await tx.execute(
        "INSERT INTO users (id, name, created_at) VALUES (?, ?, ?) "
        "ON CONFLICT(id) DO UPDATE SET name = excluded.name WHERE excluded.name != ''",
        (user_id, name, time.time()),
    )
