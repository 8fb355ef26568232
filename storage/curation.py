"""Caption curation rows: the undo/redo history of a project's caption edits, the two writes curation
makes beyond storage.images (a project's trigger word, removing a caption), the tags a member has marked
for removal, and the tags they pruned (the character's fixed looks, which the sample scores look for).

History is a stack per project: entries in state 'done' are undone newest first; undone entries are
always newer than every done one (a new entry discards them), and are redone oldest first.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import aiosqlite

from storage.db import Database, Tx

Captions = dict[int, str | None]  # image id → caption; None = the image had no caption


@dataclass(frozen=True)
class HistoryRow:
    id: int
    project_id: int
    kind: str
    op: dict[str, Any]
    description: str
    captions_before: Captions
    captions_after: Captions
    trigger_before: str
    trigger_after: str
    state: str           # 'done' | 'undone'
    created_at: float

    @classmethod
    def from_row(cls, row: aiosqlite.Row) -> HistoryRow:
        data = {key: row[key] for key in row.keys()}
        data["op"] = json.loads(data["op"])
        for key in ("captions_before", "captions_after"):
            # JSON object keys are strings; image ids are ints everywhere else.
            data[key] = {int(image_id): text for image_id, text in json.loads(data[key]).items()}
        return cls(**data)


_COLUMNS = ("id, project_id, kind, op, description, captions_before, captions_after, trigger_before, "
            "trigger_after, state, created_at")


async def insert(tx: Tx, *, project_id: int, kind: str, op: dict[str, Any], description: str,
                 captions_before: Captions, captions_after: Captions, trigger_before: str,
                 trigger_after: str) -> int:
    return await tx.execute(
        "INSERT INTO caption_history (project_id, kind, op, description, captions_before, captions_after, "
        "trigger_before, trigger_after, state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'done', ?)",
        (project_id, kind, json.dumps(op), description, json.dumps(captions_before), json.dumps(captions_after),
         trigger_before, trigger_after, time.time()),
    )


async def last_done(tx: Tx, project_id: int) -> HistoryRow | None:
    row = await tx.fetchone(
        f"SELECT {_COLUMNS} FROM caption_history WHERE project_id = ? AND state = 'done' ORDER BY id DESC LIMIT 1",
        (project_id,))
    return HistoryRow.from_row(row) if row else None


async def first_undone(tx: Tx, project_id: int) -> HistoryRow | None:
    row = await tx.fetchone(
        f"SELECT {_COLUMNS} FROM caption_history WHERE project_id = ? AND state = 'undone' ORDER BY id LIMIT 1",
        (project_id,))
    return HistoryRow.from_row(row) if row else None


async def set_state(tx: Tx, entry_id: int, state: str) -> None:
    await tx.execute("UPDATE caption_history SET state = ? WHERE id = ?", (state, entry_id))


async def discard_undone(tx: Tx, project_id: int) -> None:
    await tx.execute("DELETE FROM caption_history WHERE project_id = ? AND state = 'undone'", (project_id,))


async def keep_newest(tx: Tx, project_id: int, keep: int) -> None:
    await tx.execute(
        "DELETE FROM caption_history WHERE project_id = ? AND id NOT IN "
        "(SELECT id FROM caption_history WHERE project_id = ? ORDER BY id DESC LIMIT ?)",
        (project_id, project_id, keep))


async def clear(tx: Tx, project_id: int) -> None:
    await tx.execute("DELETE FROM caption_history WHERE project_id = ?", (project_id,))


async def counts(db: Database | Tx, project_id: int) -> tuple[int, int]:
    """(entries that can be undone, entries that can be redone)."""
    row = await db.fetchone(
        "SELECT COALESCE(SUM(state = 'done'), 0), COALESCE(SUM(state = 'undone'), 0) "
        "FROM caption_history WHERE project_id = ?", (project_id,))
    return (int(row[0]), int(row[1])) if row else (0, 0)


async def newest(db: Database | Tx, project_id: int, limit: int) -> list[HistoryRow]:
    rows = await db.fetchall(
        f"SELECT {_COLUMNS} FROM caption_history WHERE project_id = ? ORDER BY id DESC LIMIT ?", (project_id, limit))
    return [HistoryRow.from_row(row) for row in rows]


async def set_trigger(tx: Tx, project_id: int, trigger: str) -> None:
    await tx.execute("UPDATE projects SET trigger = ? WHERE id = ?", (trigger, project_id))


async def delete_caption(tx: Tx, image_id: int) -> None:
    await tx.execute("DELETE FROM captions WHERE image_id = ?", (image_id,))


# --- marks and pruned tags ----------------------------------------------------------------------------


async def marked_tags(db: Database | Tx, project_id: int, kind: str) -> list[str]:
    """Tags marked for removal in /lora curate, in the order they were marked."""
    rows = await db.fetchall("SELECT tag FROM curation_marks WHERE project_id = ? AND kind = ? ORDER BY position",
                             (project_id, kind))
    return [str(row[0]) for row in rows]


async def set_marked_tags(db: Database, project_id: int, kind: str, tags: list[str]) -> None:
    async with db.transaction() as tx:
        await tx.execute("DELETE FROM curation_marks WHERE project_id = ? AND kind = ?", (project_id, kind))
        await tx.executemany("INSERT INTO curation_marks (project_id, kind, tag, position) VALUES (?, ?, ?, ?)",
                             [(project_id, kind, tag, i) for i, tag in enumerate(dict.fromkeys(tags))])


async def pruned_tags(db: Database | Tx, project_id: int) -> list[str]:
    rows = await db.fetchall("SELECT tag FROM pruned_tags WHERE project_id = ? ORDER BY position", (project_id,))
    return [str(row[0]) for row in rows]


async def add_pruned_tags(db: Database, project_id: int, tags: list[str]) -> None:
    """Remembers tags removed from the training captions (those already known keep their place)."""
    async with db.transaction() as tx:
        row = await tx.fetchone("SELECT COALESCE(MAX(position) + 1, 0) FROM pruned_tags WHERE project_id = ?",
                                (project_id,))
        start = int(row[0]) if row else 0
        await tx.executemany("INSERT OR IGNORE INTO pruned_tags (project_id, tag, position) VALUES (?, ?, ?)",
                             [(project_id, tag, start + i) for i, tag in enumerate(dict.fromkeys(tags))])
