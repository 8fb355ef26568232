"""The one API that the bot, the CLI and the tests drive. It knows projects, jobs, events and files; it
knows nothing of Discord. It assembles the services (curation, training, reg pictures) on one
engine.core.Core and offers the rest itself. Every call that touches a project takes the Actor asking,
and only ever finds that actor's own projects: another member's project is simply "not found"."""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from engine import intake, naming
from engine.cluster import connect as connect_cluster
from engine.config import Config
from engine.core import Core
from engine.curation_api import CurationAPI
from engine.dataset import Staging, jpeg_preview, sweep_orphan_images
from engine.errors import Forbidden, Invalid, LimitReached, NotFound, SetupError, UserError
from engine.events import EventBus, Subscription
from engine.intake import IncomingFile, IntakeReport
from engine.jobs import JobKind, load_kinds
from engine.links import LinkSigner, new_token_id
from engine.name_cache import ProjectNames, matching
from engine.records import Actor, Job, Project
from engine.reg_api import RegAPI
from engine.scheduler import Scheduler
from engine.tagging.analyze import TagCount
from engine.training_api import TrainingAPI
from storage import artifacts as artifact_rows
from storage import images as image_rows
from storage import jobs as job_rows
from storage import projects as project_rows
from storage import settings as setting_rows
from storage import status_messages as status_rows
from storage import training_plans as plan_rows
from storage.artifacts import ArtifactRow
from storage.db import Database
from storage.images import ImageRow
from storage.layout import DataLayout, file_sha256
from storage.migrations import SchemaTooNew
from storage.status_messages import StatusMessageRow
from storage.users import upsert_user

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, config: Config, db: Database, layout: DataLayout, kinds: dict[str, JobKind],
                 cluster: Any = None) -> None:
        self.layout = layout
        self.events = EventBus()
        self._cluster = cluster
        self.scheduler = Scheduler(db, layout, config.queue, kinds, self.events, after_done=self._follow_up,
                                   cluster=cluster)
        self.core = Core(config, db, layout, kinds, self.scheduler, self.events)
        self.links = LinkSigner.from_config(config.web.secret, layout.root / "secret.key")
        self.staging = Staging(layout)
        # Where members' browsers reach the download server; the service corrects it once it knows
        # the port it really got (port 0 = any free port).
        self.public_url = config.web_base_url
        self.curation = CurationAPI(self.core)
        self.training = TrainingAPI(self.core, pruned_tags=self.curation.pruned_tags)
        self.reg = RegAPI(self.core)
        self._started = False
        self.recovered: list[Job] = []
        self._names = ProjectNames(self._load_names)

    @property
    def config(self) -> Config:
        return self.core.config

    @config.setter
    def config(self, config: Config) -> None:
        """One configuration for the facade and every service (tests and the CLI swap it)."""
        self.core.config = config

    @property
    def _db(self) -> Database:
        return self.core.db

    @classmethod
    async def open(cls, config: Config) -> Engine:
        """Opens (and migrates) the database and removes files a crash left without rows."""
        kinds = load_kinds()
        layout = DataLayout(config.data_dir)
        try:
            layout.ensure()
            db = await Database.open(layout.db_path)
        except SchemaTooNew as error:
            raise SetupError(str(error)) from None
        except (OSError, sqlite3.Error) as error:
            raise SetupError(f"cannot use the data folder {config.data_dir}: {error}; "
                             "check data_dir in the config") from None
        try:
            removed = layout.sweep_orphans(await project_rows.list_all_dirs(db))
            for path in removed:
                log.warning("removed %s: a project folder with no project (left by a crash)", path)
            for path in await sweep_orphan_images(db, layout):
                log.warning("removed %s: a picture with no database row (left by a crash)", path)
            engine = cls(config, db, layout, kinds, cluster=connect_cluster(config))
            if repaired := await engine.curation.sync_files():
                log.warning("rewrote %d caption files that disagreed with the database", repaired)
            return engine
        except BaseException:
            await db.close()
            raise

    async def start(self) -> None:
        """Recovers interrupted jobs (`recovered` then says which, as they are now: back in the queue with a
        note, or failed with the reason) and starts the lanes."""
        ids = await self.scheduler.start()
        self._started = True
        self.recovered = [await self.core.job(job_id) for job_id in ids]
        for job in self.recovered:
            log.warning("job #%d (%s of %s) was interrupted; now %s: %s", job.id, job.title, job.project_name,
                        job.state, job.error)

    async def close(self) -> None:
        if self._started:
            await self.scheduler.stop()
            self._started = False
        if self._cluster is not None:
            self._cluster.close()
        await self._db.close()

    def subscribe(self) -> Subscription:
        return self.events.subscribe()

    # --- projects -------------------------------------------------------------------------------

    async def create_project(self, actor: Actor, name: str, trigger: str, class_name: str) -> Project:
        name = naming.project_name(name)
        trigger = naming.trigger_word(trigger)
        class_name = naming.class_name(class_name)
        async with self._db.transaction() as tx:
            await upsert_user(tx, actor.user_id, actor.name)
            if await project_rows.get_by_name(tx, actor.user_id, name):
                raise Invalid(f"you already have a project called {name}: pick another name or /lora delete it")
            if await project_rows.count_for_user(tx, actor.user_id) >= self.config.queue.max_projects_per_user:
                raise LimitReached(
                    f"you have {self.config.queue.max_projects_per_user} projects, the most this server allows: "
                    "delete one you no longer need first"
                )
            dir_name = naming.unique_dir_name(name, await project_rows.dir_names(tx, actor.user_id))
            # Folders first, row second: a crash in between leaves only an empty folder, swept on start.
            self.layout.create_project_dirs(actor.user_id, dir_name)
            row = await project_rows.insert_project(tx, actor.user_id, name, dir_name, trigger, class_name)
        self._names.added(actor.user_id, row.name)
        return await self._project(row)

    async def list_projects(self, actor: Actor) -> list[Project]:
        return [await self._project(row) for row in await project_rows.list_for_user(self._db, actor.user_id)]

    async def project_names(self, actor: Actor, prefix: str = "", limit: int = 25) -> list[str]:
        """The member's project names matching what they typed, from memory (autocomplete)."""
        return matching(await self._names.of(actor.user_id), prefix, limit)

    async def _load_names(self, user_id: int) -> list[str]:
        return [row.name for row in await project_rows.list_for_user(self._db, user_id)]

    async def get_project(self, actor: Actor, name: str) -> Project:
        return await self._project(await self.own_project_row(actor, name))

    async def get_project_by_id(self, actor: Actor, project_id: int) -> Project:
        """For buttons, whose custom_id carries the id: still only the actor's own project."""
        return await self._project(await self.own_project_row_by_id(actor, project_id))

    async def own_project_row_by_id(self, actor: Actor, project_id: int) -> project_rows.ProjectRow:
        return await self.core.own_project(actor, project_id)

    async def rename_project(self, actor: Actor, name: str, new_name: str) -> Project:
        row = await self.own_project_row(actor, name)
        new_name = naming.project_name(new_name)
        async with self._db.transaction() as tx:
            clash = await project_rows.get_by_name(tx, actor.user_id, new_name)
            if clash and clash.id != row.id:
                raise Invalid(f"you already have a project called {new_name}")
            await project_rows.rename(tx, row.id, new_name)
        self._names.renamed(actor.user_id, row.name, new_name)
        return await self.get_project(actor, new_name)

    async def delete_project(self, actor: Actor, name: str) -> Project:
        """Cancels the project's jobs, deletes its rows, then its files (row first: see storage.layout)."""
        row = await self.own_project_row(actor, name)
        project = await self._project(row)
        for job in await job_rows.list_jobs(self._db, user_id=actor.user_id):
            if job.project_id == row.id:
                await self.scheduler.cancel(job.id, job.user_id, "its project was deleted")
        async with self._db.transaction() as tx:
            await project_rows.delete(tx, row.id)
        self._names.removed(actor.user_id, row.name)
        self.layout.discard(self.layout.project(row.user_id, row.dir_name).root)
        return project

    async def project_dir(self, actor: Actor, name: str) -> Path:
        row = await self.own_project_row(actor, name)
        return self.layout.project(row.user_id, row.dir_name).root

    async def own_project_row(self, actor: Actor, name: str) -> project_rows.ProjectRow:
        return await self.core.own_project(actor, name)

    async def _project(self, row: project_rows.ProjectRow) -> Project:
        counts = await project_rows.counts(self._db, row.id)
        return Project(
            id=row.id, user_id=row.user_id, name=row.name, trigger=row.trigger, class_name=row.class_name,
            created_at=row.created_at, path=str(self.layout.project(row.user_id, row.dir_name).root),
            train_images=counts.train_images, reg_images=counts.reg_images, captioned=counts.captioned,
            active_jobs=counts.jobs_active,
        )

    # --- pictures, tags ---------------------------------------------------------------------------

    async def add_images(self, actor: Actor, project: str, files: list[IncomingFile], kind: str = "train",
                         progress: Callable[[int, int], None] | None = None) -> IntakeReport:
        """Validates, normalises, de-duplicates and stores pictures; a report says what happened to each."""
        if kind not in ("train", "reg"):
            raise Invalid(f"unknown picture set {kind!r}: use train or reg")
        row = await self.own_project_row(actor, project)
        dirs = self.layout.project(row.user_id, row.dir_name)
        return await intake.add_images(self._db, dirs, row.id, actor.user_id, kind, files, self.config.intake,
                                       progress)

    def stage_images(self, actor: Actor, files: list[IncomingFile]) -> str:
        return self.staging.put(actor.user_id, files)

    async def add_staged_images(self, actor: Actor, token: str, project: str, kind: str = "train") -> IntakeReport:
        await self.own_project_row(actor, project)  # before the staged files are consumed
        return await self.add_images(actor, project, self.staging.take(actor.user_id, token), kind)

    async def images(self, actor: Actor, project: str, kind: str | None = None) -> list[ImageRow]:
        row = await self.own_project_row(actor, project)
        return await image_rows.list_for_project(self._db, row.id, kind)

    async def captions(self, actor: Actor, project: str, kind: str = "train") -> dict[int, str]:
        """image id → caption, for the project's captioned pictures of one set."""
        row = await self.own_project_row(actor, project)
        return await image_rows.captions(self._db, row.id, kind)

    async def remove_image(self, actor: Actor, project: str | int, image_id: int) -> ImageRow:
        """Takes one picture (and its caption) out of the project: row first, then the files."""
        row = await (self.own_project_row_by_id(actor, project) if isinstance(project, int)
                     else self.own_project_row(actor, project))
        image = await image_rows.get(self._db, row.id, image_id)
        if image is None:
            raise NotFound("that picture is no longer in the project")
        async with self._db.transaction() as tx:
            await image_rows.delete(tx, image_id)
        dirs = self.layout.project(row.user_id, row.dir_name)
        path = dirs.pictures(image.kind) / image.filename
        path.unlink(missing_ok=True)
        path.with_suffix(".txt").unlink(missing_ok=True)
        return image

    async def preview(self, actor: Actor, project_id: int, image_id: int, max_side: int = 768) -> bytes:
        """A small JPEG of one picture, for showing it on Discord under the upload limit."""
        row = await self.own_project_row_by_id(actor, project_id)
        image = await image_rows.get(self._db, row.id, image_id)
        if image is None:
            raise NotFound("that picture is no longer in the project")
        dirs = self.layout.project(row.user_id, row.dir_name)
        path = dirs.pictures(image.kind) / image.filename
        return await asyncio.to_thread(jpeg_preview, path, max_side)

    async def tag(self, actor: Actor, project: str, *, general_threshold: float | None = None,
                  character_threshold: float | None = None) -> Job:
        """Queues WD14 tagging of the project's pictures (training and reg sets)."""
        row = await self.own_project_row(actor, project)
        if not await image_rows.list_for_project(self._db, row.id):
            raise Invalid(f"{row.name} has no pictures to tag yet: add some with /lora upload first")
        params = {**self.core.tagger_params(), "trigger": row.trigger, "kinds": ["train", "reg"]}
        for name, asked in (("general_threshold", general_threshold), ("character_threshold", character_threshold)):
            if asked is not None:
                params[name] = asked
        for name in ("general_threshold", "character_threshold"):
            if not 0.0 <= params[name] <= 2.0:
                raise Invalid(f"{name.replace('_', ' ')} must be between 0 and 2 (above 1 turns that kind of tag off)")
        return await self.core.enqueue(actor, "tag", row, params)

    async def tag_stats(self, actor: Actor, project: str, kind: str = "train") -> list[TagCount]:
        """Each tag with how many of the set's captioned pictures have it, most common first."""
        return await self.core.tag_stats(await self.own_project_row(actor, project), kind)

    # --- jobs -----------------------------------------------------------------------------------

    async def enqueue(self, actor: Actor, kind_name: str, project: str | None = None,
                      params: dict[str, Any] | None = None, *, follows: int | None = None) -> Job:
        row = await self.own_project_row(actor, project) if project else None
        return await self.core.enqueue(actor, kind_name, row, params, follows=follows)

    async def _follow_up(self, job: job_rows.JobRow) -> None:
        """What the engine queues by itself when a job has ended done: sample grids after a training
        ([samples] auto_after_training). A refusal (the member's queue is full) is logged, not raised."""
        if job.kind != "train" or not self.config.samples.auto_after_training or job.project_id is None:
            return
        project = await project_rows.get_by_id(self._db, job.project_id)
        if project is None:
            return
        try:
            await self.training.samples(Actor(job.user_id), project.name, follows=job.id)
        except UserError as error:
            log.warning("job %s: no sample grids after the training: %s", job.id, error)

    async def run_here(self, start: Callable[[], Awaitable[Job]]) -> Job:
        """Starts the scheduler in this process, queues a job with `start`, and waits for it and the jobs
        the engine queues after it (the CLI and the demo). Raises SchedulerBusy while another process (the
        bot) runs jobs from the same folder; nothing is queued then."""
        return (await self.run_chain_here(start))[0]

    async def run_chain_here(self, start: Callable[[], Awaitable[Job]]) -> list[Job]:
        """As run_here; returns the job and its follow-ups (samples after a training), as they ended."""
        subscription = self.subscribe()
        try:
            if not self._started:
                await self.start()
            return await self._follow(subscription, (await start()).id)
        finally:
            subscription.close()

    async def follow_here(self, job_id: int) -> list[Job]:
        """Runs jobs here until `job_id`, already queued (a recovered one, say), and its follow-ups have
        ended; returns them as they ended."""
        subscription = self.subscribe()
        try:
            if not self._started:
                await self.start()
            return await self._follow(subscription, job_id)
        finally:
            subscription.close()

    async def _follow(self, subscription: Subscription, job_id: int) -> list[Job]:
        chain, waiting = [job_id], set() if not (await self.job(job_id)).active else {job_id}
        while waiting:
            event = await subscription.get()
            if event.type == "queued" and event.data.get("follows") in chain:
                chain.append(event.job_id)
                waiting.add(event.job_id)
            elif event.final:
                waiting.discard(event.job_id)
        return [await self.job(job_id) for job_id in chain]

    async def job(self, job_id: int) -> Job:
        return await self.core.job(job_id)

    async def jobs(self, actor: Actor | None = None, *, include_finished: bool = False) -> list[Job]:
        """Queued and running jobs in the order they will run (actor None: everyone's)."""
        states = job_rows.ACTIVE_STATES + (job_rows.FINAL_STATES if include_finished else ())
        rows = await job_rows.list_jobs(self._db, states=states, user_id=actor.user_id if actor else None)
        jobs = await self.core.job_records(rows)
        return sorted(jobs, key=lambda job: (job.state != "running", job.position or 0, job.id))

    async def cancel(self, actor: Actor, job_id: int) -> Job:
        job = await self.job(job_id)
        if job.user_id != actor.user_id and not actor.is_admin:
            raise Forbidden(f"job #{job_id} is not yours: you can only cancel your own jobs")
        if not job.active:
            raise Invalid(f"job #{job_id} has already {job.state.replace('done', 'finished')}")
        who = "you" if job.user_id == actor.user_id else f"a server admin ({actor.name or actor.user_id})"
        await self.scheduler.cancel(job_id, job.user_id, f"cancelled by {who}")
        return await self.job(job_id)

    async def job_events(self, job_id: int) -> list[job_rows.JobEventRow]:
        return await job_rows.events(self._db, job_id)

    # --- status messages (where a front-end shows a job) -----------------------------------------

    async def attach_status_message(self, job_id: int, channel_id: int, message_id: int) -> None:
        await status_rows.put(self._db, job_id, channel_id, message_id)

    async def status_message(self, job_id: int) -> StatusMessageRow | None:
        return await status_rows.get(self._db, job_id)

    async def mark_status_rendered(self, job_id: int, rendered: str) -> None:
        await status_rows.mark_rendered(self._db, job_id, rendered)

    # --- artifacts and download links -----------------------------------------------------------

    async def artifacts(self, actor: Actor, project: str, kind: str | None = None) -> list[ArtifactRow]:
        row = await self.own_project_row(actor, project)
        return await artifact_rows.list_for_project(self._db, row.id, kind)

    async def artifact_path(self, artifact: ArtifactRow) -> Path:
        return await self.core.artifact_path(artifact)

    async def download_link(self, actor: Actor, artifact_id: int) -> str:
        artifact = await artifact_rows.get(self._db, artifact_id)
        project = await project_rows.get_by_id(self._db, artifact.project_id) if artifact else None
        if artifact is None or project is None or project.user_id != actor.user_id:
            raise NotFound("that file does not exist or is not yours")
        expires_at = int(time.time() + self.config.web.link_ttl_hours * 3600)
        token_id = new_token_id()
        async with self._db.transaction() as tx:
            await artifact_rows.insert_link(tx, token_id, artifact_id, actor.user_id, expires_at)
        return f"{self.public_url}/d/{self.links.sign(token_id, expires_at)}"

    async def export_link(self, actor: Actor, project: str, path: Path | str) -> str:
        """A download link for a file the engine wrote into the project (an export, a LoRA)."""
        row = await self.own_project_row(actor, project)
        root = self.layout.project(row.user_id, row.dir_name).root
        path = Path(path)
        digest = await asyncio.to_thread(file_sha256, path)
        async with self._db.transaction() as tx:
            artifact_id = await artifact_rows.upsert(
                tx, project_id=row.id, job_id=None, kind="export", path=path.relative_to(root).as_posix(),
                size=path.stat().st_size, sha256=digest)
        return await self.download_link(actor, artifact_id)

    async def resolve_download(self, token: str) -> Path | None:
        """The file behind a download token, or None if it is forged, expired, revoked or gone."""
        now = time.time()
        parsed = self.links.verify(token, now)
        if parsed is None:
            return None
        artifact = await artifact_rows.link_artifact(self._db, parsed.token_id, now)
        if artifact is None:
            return None
        path = await self.artifact_path(artifact)
        return path if path.is_file() else None

    # --- maintenance and health -----------------------------------------------------------------

    async def run_maintenance(self) -> dict[str, int]:
        """Deletes finished jobs past retention (with their logs), expired download links and old training
        plans."""
        now = time.time()
        cutoff = now - self.config.retention.finished_jobs_days * 86400
        async with self._db.transaction() as tx:
            old_jobs = await job_rows.delete_finished_before(tx, cutoff)
            expired = await artifact_rows.delete_expired_links(tx, now)
        for job_id in old_jobs:
            self.layout.job_log(job_id).unlink(missing_ok=True)
        plans = await plan_rows.delete_older_than(self._db, now - self.config.retention.training_plans_days * 86400)
        return {"jobs_removed": len(old_jobs), "links_expired": expired, "plans_expired": plans,
                "staging_expired": self.staging.expire(now)}

    async def health(self) -> dict[str, Any]:
        jobs = await job_rows.list_jobs(self._db)
        return {
            "ok": True,
            "schema_version": await self._db.schema_version(),
            "queued": sum(job.state == "queued" for job in jobs),
            "running": sum(job.state == "running" for job in jobs),
        }

    async def get_setting(self, key: str) -> str | None:
        return await setting_rows.get(self._db, key)

    async def put_setting(self, key: str, value: str) -> None:
        await setting_rows.put(self._db, key, value)
