"""The persistent job queue: one GPU lane running one job at a time and a CPU lane beside it.

Jobs live in the database, so a restart loses nothing: on start, jobs that were running when the
process died are re-queued (if they may run again) or failed with a reason. Each lane picks its next
job in fair-share order (engine.fairshare) and runs it in a worker subprocess (engine.runner).
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from engine.config import QueueConfig
from engine.errors import UserError
from engine.events import EventBus
from engine.fairshare import fair_order
from engine.jobs import JobKind, resolve
from engine.jobs.context import JobSpec
from engine.records import EngineEvent
from engine.runner import JobWorker, Outcome, UnplaceableJob, WorkerProcess
from storage import artifacts as artifact_rows
from storage import jobs as job_rows
from storage import projects as project_rows
from storage.db import Database
from storage.layout import DataLayout, file_sha256

log = logging.getLogger(__name__)

LANES = ("gpu", "cpu")
PROGRESS_EVENT_INTERVAL_S = 1.0  # progress is kept on the job row always, in job_events at most this often
# Another process (the CLI) may enqueue or cancel through the database; the lanes look this often.
DB_POLL_S = 2.0
# How long a warm worker may take to put its state back after a job before it is replaced.
WARM_RESET_TIMEOUT_S = 60.0


class SchedulerBusy(UserError):
    pass


class Scheduler:
    def __init__(self, db: Database, layout: DataLayout, config: QueueConfig, kinds: dict[str, JobKind],
                 bus: EventBus, after_done: Callable[[job_rows.JobRow], Awaitable[None]] | None = None,
                 cluster: Any = None) -> None:
        self._db = db
        # The GPU machines GPU-lane jobs go to (engine.cluster.ray_lane.RayCluster); None: this machine.
        self._cluster = cluster
        # Called once a job has ended "done" (its event published): the engine queues follow-up jobs here.
        self._after_done = after_done
        self._layout = layout
        self._config = config
        self._kinds = kinds
        self._bus = bus
        self._wake = {lane: asyncio.Event() for lane in LANES}
        self._loops: list[asyncio.Task[None]] = []
        self._running: dict[int, JobWorker] = {}
        self._exiting: set[JobWorker] = set()   # finished jobs whose process is still exiting
        self._warm: dict[str, WorkerProcess] = {}   # lane → its warm worker, idle between jobs
        self._lane_jobs: dict[str, set[asyncio.Task[None]]] = {lane: set() for lane in LANES}   # running
        self._cancelled: set[int] = set()
        self._lock_file: int | None = None

    async def start(self) -> list[int]:
        """Takes the data folder, deals with jobs a dead process left running (their ids come back), and
        starts the lanes."""
        self._take_lock()
        recovered = await self.recover()
        self._loops = [asyncio.create_task(self._lane_loop(lane), name=f"lane-{lane}") for lane in LANES]
        return recovered

    def _take_lock(self) -> None:
        """One scheduler per data folder: two would both run the GPU lane, and each would think the
        other's running jobs were left over from a crash. The lock dies with the process."""
        path = self._layout.root / "scheduler.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SchedulerBusy(
                f"another lorabake process is running jobs from {self._layout.root} (probably the bot): "
                "stop it first, or queue the job through Discord"
            ) from None
        self._lock_file = fd

    def runs_jobs(self) -> bool:
        """Whether some lorabake process (this one or another, e.g. the bot) is running jobs from this data
        folder now: it holds the folder's scheduler lock."""
        if self._lock_file is not None:
            return True
        path = self._layout.root / "scheduler.lock"
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)   # also releases the shared lock, if it was taken
        return False

    async def stop(self) -> None:
        """Stops the lanes; running jobs are killed and go back to the queue for the next start."""
        for task in self._loops:
            task.cancel()
        for task in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._loops = []
        for worker in list(self._exiting):   # done, but its process was still exiting: let it go first
            await worker.reap(self._config.cancel_grace_s)
        self._exiting.clear()
        for worker in self._warm.values():
            await worker.retire(self._config.cancel_grace_s)
        self._warm.clear()
        if self._lock_file is not None:
            os.close(self._lock_file)  # closing the descriptor releases the flock
            self._lock_file = None

    def wake(self, lane: str) -> None:
        self._wake[lane].set()

    # --- recovery -------------------------------------------------------------------------------

    async def recover(self) -> list[int]:
        """Deals with jobs left 'running' by a process that died. Returns their ids."""
        stale = await job_rows.list_jobs(self._db, states=("running",))
        for job in stale:
            _kill_stale_worker(job.worker_pid)
            kind = self._kinds.get(job.kind)
            if kind is not None and kind.resumable and job.attempts < self._config.max_attempts:
                reason = (f"lorabake restarted during attempt {job.attempts}: the job went back in the queue "
                          f"(attempt {job.attempts + 1} of {self._config.max_attempts}) and goes on from the work "
                          "it had saved")
                await self._requeue(job, reason)
            else:
                reason = ("the bot restarted while this job was running"
                          + (f", and it had already been tried {job.attempts} times" if kind else
                             f"; this lorabake no longer knows job kind {job.kind!r}")
                          + ": start it again when you are ready")
                await self._finish(job.id, job.user_id, "failed", error=reason)
        return [job.id for job in stale]

    # --- queue order ----------------------------------------------------------------------------

    async def ordered(self, lane: str) -> list[job_rows.JobRow]:
        queued = await job_rows.list_jobs(self._db, states=("queued",), lane=lane, limit=10_000)
        return fair_order(queued, await job_rows.last_start_by_user(self._db, lane))

    async def positions(self) -> dict[int, int]:
        """job id → 1-based place among the queued jobs of its lane."""
        places: dict[int, int] = {}
        for lane in LANES:
            for index, job in enumerate(await self.ordered(lane), start=1):
                places[job.id] = index
        return places

    # --- cancel ---------------------------------------------------------------------------------

    async def cancel(self, job_id: int, user_id: int, reason: str) -> bool:
        """Cancels a queued or running job; False if it had already ended."""
        self._cancelled.add(job_id)
        if not await self._finish(job_id, user_id, "cancelled", error=reason):
            self._cancelled.discard(job_id)
            return False
        worker = self._running.get(job_id)
        if worker is not None:
            await worker.kill(self._config.cancel_grace_s)
        self.publish_positions()
        return True

    # --- running --------------------------------------------------------------------------------

    async def _lane_loop(self, lane: str) -> None:
        """Starts the lane's next job whenever it has a free slot: one on this machine, one per GPU of the
        cluster's nodes for the GPU lane of a cluster."""
        running = self._lane_jobs[lane]
        try:
            while True:
                self._wake[lane].clear()
                if len(running) < await self._slots(lane) and (order := await self.ordered(lane)):
                    started = await self._claim(order[0])
                    if started is not None:
                        task = asyncio.create_task(self._run_guarded(order[0], *started))
                        running.add(task)
                        task.add_done_callback(running.discard)
                    continue
                wake = asyncio.create_task(self._wake[lane].wait())
                await asyncio.wait({wake, *running}, timeout=DB_POLL_S, return_when=asyncio.FIRST_COMPLETED)
                wake.cancel()
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _slots(self, lane: str) -> int:
        if lane == "gpu" and self._cluster is not None:
            return await asyncio.to_thread(self._cluster.slots)
        return 1

    async def _run_guarded(self, job: job_rows.JobRow, kind: JobKind, project: Any) -> None:
        try:
            await self._run(job, kind, project)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not stop the lane for everyone
            log.exception("lane %s: job %s could not be run", kind.lane, job.id)
            await self._finish(job.id, job.user_id, "failed",
                               error="lorabake hit an internal error starting this job (see the bot's log)")

    async def _claim(self, job: job_rows.JobRow) -> tuple[JobKind, Any] | None:
        """Marks the job running (its kind and project, to run it with), or ends it when it cannot run."""
        kind = self._kinds.get(job.kind)
        if kind is None:
            await self._finish(job.id, job.user_id, "failed", error=f"unknown job kind {job.kind!r}")
            return None
        project = await project_rows.get_by_id(self._db, job.project_id) if job.project_id else None
        if kind.needs_project and project is None:
            await self._finish(job.id, job.user_id, "failed", error="the project of this job was deleted")
            return None
        async with self._db.transaction() as tx:
            await job_rows.mark_running(tx, job.id, None)
            await job_rows.add_event(tx, job.id, "started", {"attempt": job.attempts + 1})
        self.publish("started", job.id, job.user_id, {"attempt": job.attempts + 1})
        self.publish_positions()
        return kind, project

    async def _run(self, job: job_rows.JobRow, kind: JobKind, project: Any) -> None:
        project_dir = self._layout.project(project.user_id, project.dir_name).root if project else None
        spec = JobSpec(job.id, job.kind, kind.entry, job.params, str(self._layout.root),
                       str(project_dir) if project_dir else None, job.attempts + 1)
        worker = await self._worker(kind, project_dir)
        self._running[job.id] = worker
        try:
            try:
                await worker.submit(spec, self._layout.job_log(job.id))
            except UnplaceableJob as error:
                await worker.retire(self._config.cancel_grace_s)
                await self._finish(job.id, job.user_id, "failed", error=str(error))
                return
            if worker.pid is not None:
                async with self._db.transaction() as tx:
                    await job_rows.set_pid(tx, job.id, worker.pid)
            reporter = _EventRecorder(self, self._db, job, project_dir)
            watcher = asyncio.create_task(self._watch_for_outside_cancel(job, worker))
            try:
                outcome = await worker.run(reporter.record)
            finally:
                watcher.cancel()
        except asyncio.CancelledError:
            # The engine is shutting down: stop the worker, and give the job back to the queue
            # without counting this attempt against it.
            await asyncio.shield(self._interrupt(job, worker))
            raise
        finally:
            self._running.pop(job.id, None)
        if job.id in self._cancelled:
            self._cancelled.discard(job.id)
            return
        if outcome.state == "lost":
            await worker.retire(self._config.cancel_grace_s)
            await self._requeue_lost(job, kind, outcome.error or "its machine was lost")
            return
        if outcome.state == "done" and kind.on_done:
            try:
                outcome.result = await resolve(kind.on_done)(self._db, job, outcome.result or {})
            except Exception:
                log.exception("job %s: storing its result failed", job.id)
                outcome = Outcome("failed", error="the job finished but its results could not be saved "
                                                  "(see the bot's log); run it again")
        if outcome.state == "done":
            await self._finish(job.id, job.user_id, "done", result=outcome.result,
                               before_publish=lambda: self._queue_follow_ups(job))
        else:
            await self._finish(job.id, job.user_id, "failed", error=outcome.error,
                               extra={"log_tail": outcome.log_tail[-8:]})
        # The member already has the result; the lane's next job waits until this process has given its
        # memory back (on one GPU, two models loaded at once could run out of it), or, a warm worker, has
        # put its state back for the next job.
        self._exiting.add(worker)
        if isinstance(worker, WorkerProcess) and outcome.state == "done" and await worker.ready(WARM_RESET_TIMEOUT_S):
            self._warm[kind.lane] = worker
        else:
            await worker.retire(self._config.cancel_grace_s)   # if the engine stops meanwhile, stop() reaps it
        self._exiting.discard(worker)

    async def _worker(self, kind: JobKind, project_dir: Path | None) -> JobWorker:
        """Where the job runs: a node of the cluster (GPU lane; tagging too while a node is idle), the lane's
        warm worker (started on first use), or a fresh process for the one job."""
        lane = kind.lane
        if self._cluster is not None and (lane == "gpu" or (kind.gpu_when_free and await self._gpu_idle())):
            return self._cluster.job(project_dir)
        warm = self._warm.pop(lane, None)
        if warm is not None and warm.process.returncode is None:
            return warm
        if lane == "gpu" and self._config.warm_worker:
            return await WorkerProcess.start(serve=True, max_rss_gb=self._config.warm_worker_max_rss_gb)
        return await WorkerProcess.start()

    async def _gpu_idle(self) -> bool:
        """A GPU node of the cluster is free and no GPU-lane job waits for it."""
        return len(self._lane_jobs["gpu"]) < await self._slots("gpu") and not await self.ordered("gpu")

    async def _requeue_lost(self, job: job_rows.JobRow, kind: JobKind, what: str) -> None:
        """A job whose machine died under it: back in the queue to go on from its last saved work elsewhere,
        unless it has had its attempts."""
        attempt = job.attempts + 1
        if kind.resumable and attempt < self._config.max_attempts:
            reason = (f"{what}: the job went back in the queue (attempt {attempt + 1} of "
                      f"{self._config.max_attempts}) and goes on from the work it had saved, on another GPU machine")
            await self._requeue(job, reason)
            self.publish_positions()
        else:
            await self._finish(job.id, job.user_id, "failed",
                               error=f"{what}, and it had already been tried {attempt} times: start it again")

    async def _watch_for_outside_cancel(self, job: job_rows.JobRow, worker: JobWorker) -> None:
        """A job cancelled by another process (the CLI) only changes its row: notice, and stop it."""
        while True:
            await asyncio.sleep(DB_POLL_S)
            row = await job_rows.get(self._db, job.id)
            if row is None or row.state != "running":
                self._cancelled.add(job.id)
                await worker.kill(self._config.cancel_grace_s)
                if row is not None:
                    self.publish(row.state, job.id, job.user_id, {"error": row.error or ""})
                return

    async def _interrupt(self, job: job_rows.JobRow, worker: JobWorker) -> None:
        worker.close_stdin()
        await worker.kill(self._config.cancel_grace_s)
        reason = "the bot was stopped while this job was running: it went back in the queue and goes on from " \
                 "the work it had saved"
        await self._requeue(job, reason, count_attempt=False)

    async def _requeue(self, job: job_rows.JobRow, reason: str, *, count_attempt: bool = True) -> None:
        """A running job back in the queue, with the note its owner reads."""
        async with self._db.transaction() as tx:
            await job_rows.requeue(tx, job.id, reason, count_attempt=count_attempt)
            await job_rows.add_event(tx, job.id, "requeued", {"reason": reason})
        self.publish("requeued", job.id, job.user_id, {"reason": reason})

    async def _queue_follow_ups(self, job: job_rows.JobRow) -> None:
        if self._after_done is None:
            return
        try:
            await self._after_done(job)
        except Exception:  # a follow-up that cannot be queued must not stop the lane
            log.exception("job %s: queueing its follow-up failed", job.id)

    async def _finish(self, job_id: int, user_id: int, state: str, *, error: str | None = None,
                      result: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                      before_publish: Callable[[], Awaitable[None]] | None = None) -> bool:
        """Ends the job in the database, then announces it. `before_publish` runs in between (follow-up
        jobs are queued there), so whoever waits for this job's end already knows what follows it."""
        data: dict[str, Any] = {**(extra or {})}
        if error:
            data["error"] = error
        if result is not None:
            data["result"] = result
        async with self._db.transaction() as tx:
            changed = await job_rows.finish(tx, job_id, state, error=error, result=result)
            if changed:
                await job_rows.add_event(tx, job_id, state, data)
        if changed:
            if before_publish is not None:
                await before_publish()
            self.publish(state, job_id, user_id, data)
        return changed

    def publish(self, event_type: str, job_id: int, user_id: int, data: dict[str, Any]) -> None:
        self._bus.publish(EngineEvent(event_type, job_id, user_id, data, time.time()))

    def publish_positions(self) -> None:
        self._bus.publish(EngineEvent("positions", 0, 0, {}, time.time()))


class _EventRecorder:
    """Turns one running job's worker events into rows and published events."""

    def __init__(self, scheduler: Scheduler, db: Database, job: job_rows.JobRow, project_dir: Path | None) -> None:
        self._scheduler = scheduler
        self._db = db
        self._job = job
        self._project_dir = project_dir
        self._last_progress_row = 0.0

    async def record(self, event: dict[str, Any]) -> None:
        db = self._db
        event_type = str(event.pop("type", "log"))
        ts = float(event.pop("ts", time.time()))
        if event_type == "progress":
            async with db.transaction() as tx:
                await job_rows.set_progress(tx, self._job.id, event)
                if ts - self._last_progress_row >= PROGRESS_EVENT_INTERVAL_S:
                    self._last_progress_row = ts
                    await job_rows.add_event(tx, self._job.id, "progress", event, ts)
        elif event_type == "artifact":
            event = await self._register_artifact(event)
            async with db.transaction() as tx:
                await job_rows.add_event(tx, self._job.id, "artifact", event, ts)
        elif event_type == "artifact_moved":
            event_type = "log"
            event = await self._move_artifact(event)
            async with db.transaction() as tx:
                await job_rows.add_event(tx, self._job.id, "log", event, ts)
        else:
            event_type = "log"
            async with db.transaction() as tx:
                await job_rows.add_event(tx, self._job.id, "log", event, ts)
        self._scheduler.publish(event_type, self._job.id, self._job.user_id, event)

    def _relative(self, path: Path) -> str | None:
        """`path` inside this job's project folder, as artifacts name it; None for anything else (a worker's
        word is never trusted as a path)."""
        if self._project_dir is None or self._job.project_id is None:
            return None
        try:
            return path.resolve().relative_to(self._project_dir.resolve()).as_posix()
        except ValueError:
            return None

    async def _move_artifact(self, event: dict[str, Any]) -> dict[str, Any]:
        old, new = self._relative(Path(event["old"])), self._relative(Path(event["new"]))
        moved = False
        if old is not None and new is not None and (self._project_dir / new).is_file():
            async with self._db.transaction() as tx:
                moved = await artifact_rows.move(tx, self._job.project_id, old, new)
        return {"level": "debug", "message": f"file moved: {old} → {new}" + ("" if moved else " (not registered)")}

    async def _register_artifact(self, event: dict[str, Any]) -> dict[str, Any]:
        path = Path(event["path"])
        relative = self._relative(path)
        if relative is None or not path.is_file():
            return {**event, "registered": False}
        digest = await asyncio.to_thread(file_sha256, path)
        async with self._db.transaction() as tx:
            artifact_id = await artifact_rows.upsert(
                tx, project_id=self._job.project_id, job_id=self._job.id, kind=str(event.get("kind", "file")),
                path=relative, size=path.stat().st_size, sha256=digest,
            )
        return {**event, "path": relative, "artifact_id": artifact_id, "registered": True}


def _kill_stale_worker(pid: int | None) -> None:
    """A worker of a dead bot normally exits by itself (its stdin closed); make sure, without ever
    signalling a process that is not one of ours (the pid may have been reused)."""
    if not pid:
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"engine.worker" in cmdline:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, 9)
