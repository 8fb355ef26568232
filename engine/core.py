"""What every part of the engine stands on: the configuration, the database, the data folder, the job kinds
and the scheduler, with the lookups they all need — a member's own project, queueing a job and reading it
back as a record, a project's tag counts, where an artifact lives, the tagger's parameters.

The facade (engine.facade.Engine) builds one Core and hands it to each service (curation, training, reg
pictures), which get any other service they need handed in too: no service imports the facade or reaches
into another through it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import MODEL_FAMILIES, Config
from engine.errors import Invalid, LimitReached, NotFound
from engine.events import EventBus
from engine.jobs import JobKind, require_kind
from engine.records import Actor, Job
from engine.scheduler import Scheduler
from engine.tagging.analyze import TagCount, analyze
from storage import artifacts as artifact_rows
from storage import images as image_rows
from storage import jobs as job_rows
from storage import projects as project_rows
from storage.artifacts import ArtifactRow
from storage.db import Database
from storage.layout import DataLayout, ProjectDirs
from storage.projects import ProjectRow
from storage.users import upsert_user

# One writer per project: a job of a kind on the left is refused while the same project has a queued or
# running job of a kind on its right. They write the same folder, or one changes what the other reads:
# train writes output/ (moving the last run aside) and reads the pictures and captions; reg writes reg/
# pictures and their captions; tag rewrites every caption; samples writes samples/ and reads output/.
# Other kinds may overlap (a check touches no project); curation edits are refused while tagging runs
# (CurationAPI). With several GPUs these would otherwise run at the same time; on one they would still
# repeat each other's work.
CONFLICTS: dict[str, tuple[str, ...]] = {
    "train": ("train", "reg", "tag", "samples"),
    "reg": ("train", "reg", "tag"),
    "tag": ("train", "reg", "tag"),
    "samples": ("train", "samples"),
}


class JobConflict(Invalid):
    """A job of this project is already queued or running and the new one may not share the project."""

    def __init__(self, message: str, job: Job) -> None:
        super().__init__(message)
        self.job = job


def choose_family(asked: str | None, default: str) -> str:
    """The model family a member asked for (None: the server's default), checked."""
    if asked is None:
        return default
    family = asked.strip().lower()
    if family not in MODEL_FAMILIES:
        raise Invalid(f"unknown model family {asked!r}: choose one of {', '.join(MODEL_FAMILIES)}")
    return family


@dataclass
class Core:
    config: Config
    db: Database
    layout: DataLayout
    kinds: dict[str, JobKind]
    scheduler: Scheduler
    events: EventBus

    # --- projects -------------------------------------------------------------------------------

    async def own_project(self, actor: Actor, project: str | int) -> ProjectRow:
        """The actor's project by name (what members type) or id (what buttons carry); another member's
        project is simply not found."""
        if isinstance(project, int):
            row = await project_rows.get_by_id(self.db, project)
            if row is None or row.user_id != actor.user_id:
                raise NotFound("that project no longer exists, or it is not yours")
            return row
        row = await project_rows.get_by_name(self.db, actor.user_id, project.strip())
        if row is None:
            raise NotFound(f"you have no project called {project!r}: /lora list shows yours, /lora new makes one")
        return row

    def folders(self, row: ProjectRow) -> ProjectDirs:
        return self.layout.project(row.user_id, row.dir_name)

    async def tag_stats(self, row: ProjectRow, kind: str = "train") -> list[TagCount]:
        """Each tag with how many of the set's captioned pictures have it, most common first."""
        return analyze(list((await image_rows.captions(self.db, row.id, kind)).values()), row.trigger)

    def tagger_params(self) -> dict[str, Any]:
        """What a job that tags pictures (tagging, reg pictures, sample scores) passes to the tagger."""
        tagger = self.config.tagger
        return {"model": tagger.model, "cache_dir": tagger.cache_dir, "batch_size": tagger.batch_size,
                "general_threshold": tagger.general_threshold, "character_threshold": tagger.character_threshold,
                "include_ratings": tagger.include_ratings, "blacklist": tagger.blacklist}

    # --- jobs -----------------------------------------------------------------------------------

    async def enqueue(self, actor: Actor, kind_name: str, project: ProjectRow | None = None,
                      params: dict[str, Any] | None = None, *, follows: int | None = None) -> Job:
        """`follows`: the job this one was queued after by the engine itself (samples after a training);
        the "queued" event carries it so a front-end can show the new job where the first one is shown.
        Raises JobConflict while the project has a job the new one may not share it with (CONFLICTS)."""
        kind = require_kind(self.kinds, kind_name)
        if kind.needs_project and project is None:
            raise Invalid(f"a {kind.title.lower()} job needs a project: name one of yours")
        clash: job_rows.JobRow | None = None
        async with self.db.transaction() as tx:
            # Checked and inserted in one transaction, so two requests at once cannot both pass.
            if project is not None and kind.name in CONFLICTS:
                active = await job_rows.list_jobs(tx, project_id=project.id)
                clash = next((row for row in active if row.kind in CONFLICTS[kind.name]), None)
            if clash is None:
                await upsert_user(tx, actor.user_id, actor.name)
                active_jobs = await job_rows.count_active_for_user(tx, actor.user_id)
                if active_jobs >= self.config.queue.max_queued_per_user:
                    raise LimitReached(
                        f"you already have {active_jobs} jobs queued or running, the most this server allows: "
                        "wait for one to finish or /lora cancel one"
                    )
                job_id = await job_rows.insert(
                    tx, user_id=actor.user_id, project_id=project.id if project else None, kind=kind.name,
                    lane=kind.lane, priority=kind.priority, params=params or {},
                )
                queued = {"kind": kind.name, **({"follows": follows} if follows is not None else {})}
                await job_rows.add_event(tx, job_id, "queued", queued)
        if clash is not None:
            assert project is not None
            raise await self._conflict(kind.title, project, clash)
        self.scheduler.publish("queued", job_id, actor.user_id, queued)
        self.scheduler.wake(kind.lane)
        return await self.job(job_id)

    async def _conflict(self, title: str, project: ProjectRow, row: job_rows.JobRow) -> JobConflict:
        [other] = await self.job_records([row])
        if other.interrupted:
            where = "interrupted: it goes on when the bot or a job-running lorabake command starts"
        elif other.state == "running":
            where = "running"
        else:
            where = f"#{other.position} in the queue" if other.position else "queued"
        same = other.title == title
        what = f"a second {title.lower()} job" if same else f"a {title.lower()} job"
        return JobConflict(
            f"{project.name} already has job #{other.id} ({other.title}, {where}), and {what} would write the "
            f"same project: wait for it to finish, or cancel it (/lora cancel job:{other.id}, or `lorabake "
            f"cancel {other.id}`) and ask again", other)

    async def job(self, job_id: int) -> Job:
        row = await job_rows.get(self.db, job_id)
        if row is None:
            raise NotFound(f"there is no job #{job_id}: /lora queue lists the jobs you have")
        return (await self.job_records([row]))[0]

    async def active_jobs(self, project: ProjectRow, kind: str) -> list[job_rows.JobRow]:
        return [row for row in await job_rows.list_jobs(self.db, project_id=project.id) if row.kind == kind]

    async def job_records(self, rows: list[job_rows.JobRow]) -> list[Job]:
        """Job rows as the front-ends show them: project names, queue positions, files a stopped job kept."""
        positions = await self.scheduler.positions() if any(row.state == "queued" for row in rows) else {}
        orphaned = any(row.state == "running" for row in rows) and not self.scheduler.runs_jobs()
        names: dict[int, str] = {}
        for project_id in {row.project_id for row in rows if row.project_id}:
            project = await project_rows.get_by_id(self.db, project_id)
            if project:
                names[project_id] = project.name
        return [
            Job(
                id=row.id, user_id=row.user_id, project_id=row.project_id,
                project_name=names.get(row.project_id) if row.project_id else None, kind=row.kind,
                title=self.kinds[row.kind].title if row.kind in self.kinds else row.kind, lane=row.lane,
                state=row.state, position=positions.get(row.id) if row.state == "queued" else None,
                progress=row.progress, result=row.result, error=row.error, attempts=row.attempts,
                created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at,
                kept_files=await self._kept_files(row) if row.state in ("failed", "cancelled") else (),
                interrupted=orphaned and row.state == "running",
            )
            for row in rows
        ]

    async def _kept_files(self, row: job_rows.JobRow) -> tuple[str, ...]:
        paths = [await self.artifact_path(a) for a in await artifact_rows.list_for_job(self.db, row.id)]
        return tuple(path.name for path in paths if path.is_file())

    # --- files ----------------------------------------------------------------------------------

    async def artifacts(self, project: ProjectRow, kind: str | None = None) -> list[ArtifactRow]:
        return await artifact_rows.list_for_project(self.db, project.id, kind)

    async def artifact_path(self, artifact: ArtifactRow) -> Path:
        project = await project_rows.get_by_id(self.db, artifact.project_id)
        if project is None:
            raise NotFound("that file's project was deleted")
        return self.folders(project).root / artifact.path
