"""Images of a project (training set and regularization set) and their captions."""
from __future__ import annotations

import time
from dataclasses import dataclass

from storage.db import Database, Tx, record


@dataclass(frozen=True)
class ImageRow:
    id: int
    project_id: int
    kind: str          # 'train' (dataset/) or 'reg' (reg/)
    filename: str      # name inside the kind's folder; the caption file is the same name with .txt
    sha256: str        # of the stored (normalised) file
    phash: str | None  # 64-bit perceptual hash, 16 hex digits
    width: int
    height: int
    source: str        # the name the member uploaded it as
    created_at: float


_COLUMNS = "id, project_id, kind, filename, sha256, phash, width, height, source, created_at"


async def insert(tx: Tx, *, project_id: int, kind: str, filename: str, sha256: str, phash: str | None,
                 width: int, height: int, source: str) -> int:
    return await tx.execute(
        "INSERT INTO images (project_id, kind, filename, sha256, phash, width, height, source, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (project_id, kind, filename, sha256, phash, width, height, source, time.time()),
    )


async def list_for_project(db: Database | Tx, project_id: int, kind: str | None = None) -> list[ImageRow]:
    if kind is None:
        rows = await db.fetchall(f"SELECT {_COLUMNS} FROM images WHERE project_id = ? ORDER BY id", (project_id,))
    else:
        rows = await db.fetchall(
            f"SELECT {_COLUMNS} FROM images WHERE project_id = ? AND kind = ? ORDER BY id", (project_id, kind))
    return [record(ImageRow, row) for row in rows]


async def get(db: Database | Tx, project_id: int, image_id: int) -> ImageRow | None:
    row = await db.fetchone(f"SELECT {_COLUMNS} FROM images WHERE project_id = ? AND id = ?", (project_id, image_id))
    return record(ImageRow, row) if row else None


async def count_for_user(db: Database | Tx, user_id: int) -> int:
    row = await db.fetchone(
        "SELECT COUNT(*) FROM images i JOIN projects p ON p.id = i.project_id WHERE p.user_id = ?", (user_id,))
    return int(row[0]) if row else 0


async def delete(tx: Tx, image_id: int) -> None:
    await tx.execute("DELETE FROM images WHERE id = ?", (image_id,))


async def set_caption(tx: Tx, image_id: int, text: str) -> None:
    await tx.execute(
        "INSERT INTO captions (image_id, text, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT(image_id) DO UPDATE SET text = excluded.text, updated_at = excluded.updated_at",
        (image_id, text, time.time()),
    )


async def captions(db: Database | Tx, project_id: int, kind: str | None = None) -> dict[int, str]:
    """image id → caption text, for the project's captioned images (of one kind, if given)."""
    sql = "SELECT c.image_id, c.text FROM captions c JOIN images i ON i.id = c.image_id WHERE i.project_id = ?"
    params: tuple = (project_id,)
    if kind is not None:
        sql += " AND i.kind = ?"
        params += (kind,)
    return {int(row[0]): str(row[1]) for row in await db.fetchall(sql, params)}
