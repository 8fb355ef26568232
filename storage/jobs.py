"""Jobs and their events. A job moves queued → running → done | failed | cancelled; a running job
whose process died goes back to queued (recovery) or to failed."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import aiosqlite

from storage.db import Database, Tx

ACTIVE_STATES = ("queued", "running")
FINAL_STATES = ("done", "failed", "cancelled")


@dataclass(frozen=True)
class JobRow:
    id: int
    user_id: int
    project_id: int | None
    kind: str
    lane: str
    priority: int
    state: str
    params: dict[str, Any]
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    error: str | None
    attempts: int
    worker_pid: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None

    @classmethod
    def from_row(cls, row: aiosqlite.Row) -> JobRow:
        data = {key: row[key] for key in row.keys()}
        for key in ("params", "progress", "result"):
            data[key] = json.loads(data[key]) if data[key] else ({} if key == "params" else None)
        return cls(**data)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


@dataclass(frozen=True)
class JobEventRow:
    id: int
    job_id: int
    ts: float
    type: str
    data: dict[str, Any]


_COLUMNS = (
    "id, user_id, project_id, kind, lane, priority, state, params, progress, result, error, attempts, "
    "worker_pid, created_at, started_at, finished_at"
)


async def insert(tx: Tx, *, user_id: int, project_id: int | None, kind: str, lane: str, priority: int,
                 params: dict[str, Any]) -> int:
    return await tx.execute(
        "INSERT INTO jobs (user_id, project_id, kind, lane, priority, state, params, created_at) "
        "VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)",
        (user_id, project_id, kind, lane, priority, json.dumps(params), time.time()),
    )


async def get(db: Database | Tx, job_id: int) -> JobRow | None:
    row = await db.fetchone(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
    return JobRow.from_row(row) if row else None


async def list_jobs(db: Database | Tx, *, states: tuple[str, ...] = ACTIVE_STATES, user_id: int | None = None,
                    lane: str | None = None, project_id: int | None = None, limit: int = 500) -> list[JobRow]:
    where = [f"state IN ({', '.join('?' * len(states))})"]
    params: list[Any] = list(states)
    if user_id is not None:
        where.append("user_id = ?")
        params.append(user_id)
    if project_id is not None:
        where.append("project_id = ?")
        params.append(project_id)
    if lane is not None:
        where.append("lane = ?")
        params.append(lane)
    rows = await db.fetchall(
        f"SELECT {_COLUMNS} FROM jobs WHERE {' AND '.join(where)} ORDER BY id LIMIT ?", (*params, limit)
    )
    return [JobRow.from_row(row) for row in rows]


async def latest_done(db: Database | Tx, kind: str, limit: int = 20) -> list[JobRow]:
    """The newest finished ("done") jobs of a kind, newest first."""
    rows = await db.fetchall(
        f"SELECT {_COLUMNS} FROM jobs WHERE kind = ? AND state = 'done' ORDER BY finished_at DESC, id DESC LIMIT ?",
        (kind, limit))
    return [JobRow.from_row(row) for row in rows]


async def count_active_for_user(tx: Tx, user_id: int) -> int:
    row = await tx.fetchone("SELECT COUNT(*) FROM jobs WHERE user_id = ? AND state IN ('queued', 'running')",
                            (user_id,))
    return int(row[0]) if row else 0


async def last_start_by_user(db: Database | Tx, lane: str) -> dict[int, float]:
    """When each user last had a job started in this lane: the basis of round-robin fair share."""
    rows = await db.fetchall(
        "SELECT user_id, MAX(started_at) FROM jobs WHERE lane = ? AND started_at IS NOT NULL GROUP BY user_id", (lane,)
    )
    return {int(row[0]): float(row[1]) for row in rows}


async def mark_running(tx: Tx, job_id: int, pid: int | None) -> None:
    """A new attempt: its own progress from zero (not the last attempt's step count). The note a requeue
    left (`error` of a queued job: why it is being tried again) stays, so the member still reads it."""
    await tx.execute(
        "UPDATE jobs SET state = 'running', started_at = ?, attempts = attempts + 1, worker_pid = ?, progress = NULL "
        "WHERE id = ? AND state = 'queued'",
        (time.time(), pid, job_id),
    )


async def set_pid(tx: Tx, job_id: int, pid: int) -> None:
    await tx.execute("UPDATE jobs SET worker_pid = ? WHERE id = ?", (pid, job_id))


async def finish(tx: Tx, job_id: int, state: str, *, error: str | None = None,
                 result: dict[str, Any] | None = None) -> bool:
    """Moves an active job to a final state; False when it was already final (e.g. cancelled first)."""
    assert state in FINAL_STATES
    changed = await tx.execute(
        "UPDATE jobs SET state = ?, error = ?, result = ?, finished_at = ?, worker_pid = NULL "
        "WHERE id = ? AND state IN ('queued', 'running')",
        (state, error, json.dumps(result) if result is not None else None, time.time(), job_id),
    )
    return changed > 0


async def requeue(tx: Tx, job_id: int, reason: str, *, count_attempt: bool = True) -> None:
    """A running job back in the queue with a note saying why. `count_attempt=False`: the attempt it was in
    does not count against max_attempts (the bot was stopped on purpose)."""
    await tx.execute(
        "UPDATE jobs SET state = 'queued', worker_pid = NULL, error = ?, "
        "attempts = CASE WHEN ? THEN attempts ELSE MAX(attempts - 1, 0) END WHERE id = ? AND state = 'running'",
        (reason, count_attempt, job_id),
    )


async def set_progress(tx: Tx, job_id: int, progress: dict[str, Any]) -> None:
    await tx.execute("UPDATE jobs SET progress = ? WHERE id = ?", (json.dumps(progress), job_id))


async def add_event(tx: Tx, job_id: int, event_type: str, data: dict[str, Any], ts: float | None = None) -> int:
    return await tx.execute(
        "INSERT INTO job_events (job_id, ts, type, data) VALUES (?, ?, ?, ?)",
        (job_id, time.time() if ts is None else ts, event_type, json.dumps(data)),
    )


async def events(db: Database | Tx, job_id: int) -> list[JobEventRow]:
    rows = await db.fetchall("SELECT id, job_id, ts, type, data FROM job_events WHERE job_id = ? ORDER BY id",
                             (job_id,))
    return [JobEventRow(row[0], row[1], row[2], row[3], json.loads(row[4])) for row in rows]


async def delete_finished_before(tx: Tx, cutoff: float) -> list[int]:
    rows = await tx.fetchall(
        "SELECT id FROM jobs WHERE state IN ('done', 'failed', 'cancelled') AND finished_at < ?", (cutoff,)
    )
    ids = [int(row[0]) for row in rows]
    await tx.executemany("DELETE FROM jobs WHERE id = ?", [(job_id,) for job_id in ids])
    return ids
