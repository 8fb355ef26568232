"""Runs jobs in worker subprocesses (engine.worker: one process per job, or a warm worker that takes one
job after another) and turns their output into events and outcomes."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from engine.jobs.context import JobSpec
from engine.worker import END_OF_JOB

STDERR_TAIL_LINES = 20


@dataclass
class Outcome:
    state: str                      # done | failed | lost (the machine running it died: run it again)
    result: dict[str, Any] | None = None
    error: str | None = None
    log_tail: list[str] = field(default_factory=list)


LOG_END_WAIT_S = 1.0


class UnplaceableJob(Exception):
    """No machine can run this job (its message says why, for the member)."""


class JobWorker(Protocol):
    """What runs a job for the scheduler: a worker process here (WorkerProcess) or a job on a GPU node of a
    cluster (engine.cluster.ray_lane.RemoteJob)."""

    @property
    def pid(self) -> int | None: ...
    async def submit(self, spec: JobSpec, log_path: Path) -> None: ...
    async def run(self, on_event: Callable[[dict[str, Any]], Awaitable[None]]) -> Outcome: ...
    async def ready(self, timeout_s: float) -> bool: ...
    async def kill(self, grace_s: float) -> None: ...
    async def retire(self, grace_s: float) -> None: ...
    async def reap(self, grace_s: float) -> None: ...
    def close_stdin(self) -> None: ...


class WorkerProcess:
    def __init__(self, process: asyncio.subprocess.Process, *, serves: bool) -> None:
        self.process = process
        self.serves = serves                # a warm worker: takes another job after a done one
        self.jobs = 0
        self.log_path: Path | None = None
        self._log: Any = None
        self._log_ended = asyncio.Event()
        self._tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._stderr_task = asyncio.create_task(self._drain_stderr())

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def start(cls, *, serve: bool = False, max_rss_gb: float = 0.0,
                    env: dict[str, str] | None = None) -> WorkerProcess:
        args = ["--serve", "--max-rss-gb", str(max_rss_gb)] if serve else []
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engine.worker", *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # its own process group: cancel kills its children too
            limit=2**20,
        )
        return cls(process, serves=serve)

    @classmethod
    async def spawn(cls, spec: JobSpec, log_path: Path, env: dict[str, str] | None = None) -> WorkerProcess:
        """A process for this one job."""
        worker = await cls.start(env=env)
        await worker.submit(spec, log_path)
        return worker

    async def submit(self, spec: JobSpec, log_path: Path) -> None:
        """Hands the worker its next job; its log goes to `log_path` from now on."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if self._log is not None:
            self._log.close()
        self.log_path, self._log = log_path, log_path.open("ab")
        self._tail.clear()
        self._log_ended.clear()
        self.jobs += 1
        assert self.process.stdin is not None
        self.process.stdin.write((spec.to_json() + "\n").encode())
        await self.process.stdin.drain()

    async def run(self, on_event: Callable[[dict[str, Any]], Awaitable[None]]) -> Outcome:
        """Streams events to `on_event`; returns how the job ended. A job that reports its result is done
        then, while its process still exits (imports torn down, memory given back): `reap` waits for that.
        A failure waits for the process, so its log tail is complete."""
        final: dict[str, Any] | None = None
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                self._tail.append(raw.decode(errors="replace").rstrip())
                continue
            if event.get("type") == "done":
                # The worker ended its log before this event: let the last lines reach the file (bounded:
                # nothing may hold the result back).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._log_ended.wait(), LOG_END_WAIT_S)
                return Outcome("done", result=event.get("result") or {}, log_tail=list(self._tail))
            if event.get("type") == "failed":
                final = event
            else:
                await on_event(event)
        code = await self.process.wait()
        await self._stderr_task
        tail = list(self._tail)
        if final is not None:
            return Outcome("failed", error=final.get("error") or "the job failed", log_tail=tail)
        return Outcome("failed", error=_describe_crash(code), log_tail=tail)

    async def ready(self, timeout_s: float) -> bool:
        """After a done job: whether this warm worker takes another (it answers once it has put its state
        back), or has ended."""
        if not self.serves:
            return False
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout_s)
        except TimeoutError:
            return False
        with contextlib.suppress(ValueError):
            return json.loads(line or b"{}").get("type") == "ready"
        return False

    async def retire(self, grace_s: float) -> None:
        """Ends a warm worker between jobs: its stdin closes, it exits (killed after `grace_s`)."""
        self.close_stdin()
        await self.reap(grace_s)

    async def reap(self, grace_s: float) -> None:
        """Waits for the process to exit after its result (killing it after `grace_s`), and for its log."""
        try:
            await asyncio.wait_for(self.process.wait(), grace_s)
        except TimeoutError:
            await self.kill(grace_s)
        if self._stderr_task is not None:
            await self._stderr_task

    async def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        try:
            async for raw in self.process.stderr:
                line = raw.decode(errors="replace").rstrip()
                if line == END_OF_JOB:
                    if self._log is not None:
                        self._log.flush()
                    self._log_ended.set()
                    continue
                if self._log is not None:
                    self._log.write(raw)
                if line:
                    self._tail.append(line)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
            self._log_ended.set()

    async def kill(self, grace_s: float) -> None:
        """SIGTERM to the worker's process group, SIGKILL if it is still there after `grace_s`."""
        if self.process.returncode is not None:
            return
        _signal_group(self.process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), grace_s)
        except TimeoutError:
            _signal_group(self.process.pid, signal.SIGKILL)
            await self.process.wait()

    def close_stdin(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _describe_crash(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if -code == signal.SIGKILL:
            return f"the worker process was killed ({name}); the machine may have run out of memory"
        return f"the worker process crashed ({name})"
    return f"the worker process exited with code {code} before finishing"
