"""Where the bot keeps each job's status message, so it can edit it for hours (an interaction token
dies after 15 minutes) and after a restart."""
from __future__ import annotations

import time
from dataclasses import dataclass

from storage.db import Database, Tx


@dataclass(frozen=True)
class StatusMessageRow:
    job_id: int
    channel_id: int
    message_id: int
    rendered: str
    edited_at: float


async def put(db: Database, job_id: int, channel_id: int, message_id: int, rendered: str = "") -> None:
    await db.execute(
        "INSERT INTO status_messages (job_id, channel_id, message_id, rendered, edited_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT(job_id) DO UPDATE SET channel_id = excluded.channel_id, message_id = excluded.message_id",
        (job_id, channel_id, message_id, rendered, time.time()),
    )


async def get(db: Database | Tx, job_id: int) -> StatusMessageRow | None:
    row = await db.fetchone(
        "SELECT job_id, channel_id, message_id, rendered, edited_at FROM status_messages WHERE job_id = ?", (job_id,)
    )
    return StatusMessageRow(*row) if row else None


async def mark_rendered(db: Database, job_id: int, rendered: str) -> None:
    await db.execute(
        "UPDATE status_messages SET rendered = ?, edited_at = ? WHERE job_id = ?", (rendered, time.time(), job_id)
    )
