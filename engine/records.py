"""What the engine hands to its callers (bot, CLI, tests): plain frozen dataclasses, no rows."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Actor:
    """Who is asking. `is_admin` comes from the front-end (Manage Server on Discord, always on the CLI)."""

    user_id: int
    name: str = ""
    is_admin: bool = False


@dataclass(frozen=True)
class Project:
    id: int
    user_id: int
    name: str
    trigger: str
    class_name: str
    created_at: float
    path: str
    train_images: int = 0
    reg_images: int = 0
    captioned: int = 0
    active_jobs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Job:
    id: int
    user_id: int
    project_id: int | None
    project_name: str | None
    kind: str
    title: str
    lane: str
    state: str
    position: int | None          # 1 = next to start in its lane; None unless queued
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    error: str | None
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    # A job that failed or was cancelled: the files it had already written that are still there (the
    # epochs of an interrupted training), so the member knows what was kept.
    kept_files: tuple[str, ...] = ()
    # Running in the database, but no lorabake process is running jobs from this data folder (it was killed):
    # the job resumes, or fails with a reason, when the bot or a job-running command starts.
    interrupted: bool = False

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")

    def to_dict(self) -> dict[str, Any]:
        # An interrupted job is "running" only in the database: say what it is.
        return {**asdict(self), **({"state": "interrupted"} if self.interrupted else {})}


@dataclass(frozen=True)
class EngineEvent:
    """Something happened to a job. `type` is one of: queued, started, progress, log, artifact,
    requeued, done, failed, cancelled, positions (queue order changed; job_id 0)."""

    type: str
    job_id: int
    user_id: int
    data: dict[str, Any]
    ts: float

    @property
    def final(self) -> bool:
        return self.type in ("done", "failed", "cancelled")
