"""Files a job produced (LoRA checkpoints, grids, exports) and the signed download links to them."""
from __future__ import annotations

import time
from dataclasses import dataclass

from storage.db import Database, Tx, record


@dataclass(frozen=True)
class ArtifactRow:
    id: int
    project_id: int
    job_id: int | None
    kind: str
    path: str
    size: int
    sha256: str
    created_at: float


_COLUMNS = "id, project_id, job_id, kind, path, size, sha256, created_at"


async def upsert(tx: Tx, *, project_id: int, job_id: int | None, kind: str, path: str, size: int, sha256: str) -> int:
    await tx.execute(
        "INSERT INTO artifacts (project_id, job_id, kind, path, size, sha256, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(project_id, path) DO UPDATE SET job_id = excluded.job_id, kind = excluded.kind, "
        "size = excluded.size, sha256 = excluded.sha256, created_at = excluded.created_at",
        (project_id, job_id, kind, path, size, sha256, time.time()),
    )
    row = await tx.fetchone("SELECT id FROM artifacts WHERE project_id = ? AND path = ?", (project_id, path))
    assert row is not None
    return int(row[0])


async def move(tx: Tx, project_id: int, old_path: str, new_path: str) -> bool:
    """Re-points the artifact at `old_path` (a file that was moved); False when none was registered there."""
    return await tx.execute("UPDATE artifacts SET path = ? WHERE project_id = ? AND path = ?",
                            (new_path, project_id, old_path)) > 0


async def get(db: Database | Tx, artifact_id: int) -> ArtifactRow | None:
    row = await db.fetchone(f"SELECT {_COLUMNS} FROM artifacts WHERE id = ?", (artifact_id,))
    return record(ArtifactRow, row) if row else None


async def list_for_project(db: Database, project_id: int, kind: str | None = None) -> list[ArtifactRow]:
    if kind is None:
        rows = await db.fetchall(f"SELECT {_COLUMNS} FROM artifacts WHERE project_id = ? ORDER BY id", (project_id,))
    else:
        rows = await db.fetchall(
            f"SELECT {_COLUMNS} FROM artifacts WHERE project_id = ? AND kind = ? ORDER BY id", (project_id, kind)
        )
    return [record(ArtifactRow, row) for row in rows]


async def list_for_job(db: Database, job_id: int) -> list[ArtifactRow]:
    rows = await db.fetchall(f"SELECT {_COLUMNS} FROM artifacts WHERE job_id = ? ORDER BY id", (job_id,))
    return [record(ArtifactRow, row) for row in rows]


async def insert_link(tx: Tx, token_id: str, artifact_id: int, user_id: int, expires_at: float) -> None:
    await tx.execute(
        "INSERT INTO download_links (token_id, artifact_id, user_id, expires_at, created_at) VALUES (?, ?, ?, ?, ?)",
        (token_id, artifact_id, user_id, expires_at, time.time()),
    )


async def link_artifact(db: Database, token_id: str, now: float) -> ArtifactRow | None:
    """The artifact behind a link that still exists and has not expired."""
    row = await db.fetchone(
        f"SELECT {', '.join('a.' + c.strip() for c in _COLUMNS.split(','))} FROM download_links l "
        "JOIN artifacts a ON a.id = l.artifact_id WHERE l.token_id = ? AND l.expires_at > ?",
        (token_id, now),
    )
    return record(ArtifactRow, row) if row else None


async def delete_expired_links(tx: Tx, now: float) -> int:
    return await tx.execute("DELETE FROM download_links WHERE expires_at <= ?", (now,))
