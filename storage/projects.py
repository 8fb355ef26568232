from __future__ import annotations

import time
from dataclasses import dataclass

from storage.db import Database, Tx, record


@dataclass(frozen=True)
class ProjectRow:
    id: int
    user_id: int
    name: str
    dir_name: str
    trigger: str
    class_name: str
    created_at: float


@dataclass(frozen=True)
class ProjectCounts:
    train_images: int
    reg_images: int
    captioned: int
    jobs_active: int


_COLUMNS = "id, user_id, name, dir_name, trigger, class_name, created_at"


async def insert_project(tx: Tx, user_id: int, name: str, dir_name: str, trigger: str, class_name: str) -> ProjectRow:
    now = time.time()
    project_id = await tx.execute(
        "INSERT INTO projects (user_id, name, dir_name, trigger, class_name, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        (user_id, name, dir_name, trigger, class_name, now),
    )
    return ProjectRow(project_id, user_id, name, dir_name, trigger, class_name, now)


async def get_by_name(db: Database | Tx, user_id: int, name: str) -> ProjectRow | None:
    row = await db.fetchone(
        f"SELECT {_COLUMNS} FROM projects WHERE user_id = ? AND name = ? COLLATE NOCASE", (user_id, name)
    )
    return record(ProjectRow, row) if row else None


async def get_by_id(db: Database | Tx, project_id: int) -> ProjectRow | None:
    row = await db.fetchone(f"SELECT {_COLUMNS} FROM projects WHERE id = ?", (project_id,))
    return record(ProjectRow, row) if row else None


async def list_for_user(db: Database, user_id: int) -> list[ProjectRow]:
    rows = await db.fetchall(
        f"SELECT {_COLUMNS} FROM projects WHERE user_id = ? ORDER BY name COLLATE NOCASE", (user_id,)
    )
    return [record(ProjectRow, row) for row in rows]


async def list_all(db: Database) -> list[ProjectRow]:
    return [record(ProjectRow, row) for row in await db.fetchall(f"SELECT {_COLUMNS} FROM projects ORDER BY id")]


async def list_all_dirs(db: Database) -> set[tuple[int, str]]:
    return {(row[0], row[1]) for row in await db.fetchall("SELECT user_id, dir_name FROM projects")}


async def dir_names(tx: Tx, user_id: int) -> set[str]:
    return {row[0] for row in await tx.fetchall("SELECT dir_name FROM projects WHERE user_id = ?", (user_id,))}


async def count_for_user(tx: Tx, user_id: int) -> int:
    row = await tx.fetchone("SELECT COUNT(*) FROM projects WHERE user_id = ?", (user_id,))
    return int(row[0]) if row else 0


async def rename(tx: Tx, project_id: int, new_name: str) -> None:
    await tx.execute("UPDATE projects SET name = ? WHERE id = ?", (new_name, project_id))


async def delete(tx: Tx, project_id: int) -> None:
    await tx.execute("DELETE FROM projects WHERE id = ?", (project_id,))


async def counts(db: Database, project_id: int) -> ProjectCounts:
    row = await db.fetchone(
        """
        SELECT
          (SELECT COUNT(*) FROM images WHERE project_id = :p AND kind = 'train'),
          (SELECT COUNT(*) FROM images WHERE project_id = :p AND kind = 'reg'),
          (SELECT COUNT(*) FROM captions c JOIN images i ON i.id = c.image_id WHERE i.project_id = :p),
          (SELECT COUNT(*) FROM jobs WHERE project_id = :p AND state IN ('queued', 'running'))
        """,
        {"p": project_id},
    )
    assert row is not None
    return ProjectCounts(*(int(value) for value in row))
