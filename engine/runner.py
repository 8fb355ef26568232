"""Runs one job in a worker subprocess and turns its output into events and an outcome."""
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
from typing import Any

from engine.jobs.context import JobSpec

STDERR_TAIL_LINES = 20


@dataclass
class Outcome:
    state: str                      # done | failed
    result: dict[str, Any] | None = None
    error: str | None = None
    log_tail: list[str] = field(default_factory=list)


LOG_END_WAIT_S = 1.0


class WorkerProcess:
    def __init__(self, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self.process = process
        self.log_path = log_path
        self._tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._stderr_task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def spawn(cls, spec: JobSpec, log_path: Path, env: dict[str, str] | None = None) -> WorkerProcess:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engine.worker",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # its own process group: cancel kills its children too
            limit=2**20,
        )
        assert process.stdin is not None
        process.stdin.write((spec.to_json() + "\n").encode())
        await process.stdin.drain()
        return cls(process, log_path)

    async def run(self, on_event: Callable[[dict[str, Any]], Awaitable[None]]) -> Outcome:
        """Streams events to `on_event`; returns how the job ended. A job that reports its result is done
        then, while its process still exits (imports torn down, memory given back): `reap` waits for that.
        A failure waits for the process, so its log tail is complete."""
        final: dict[str, Any] | None = None
        self._stderr_task = asyncio.create_task(self._drain_stderr())
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                self._tail.append(raw.decode(errors="replace").rstrip())
                continue
            if event.get("type") == "done":
                # The worker ended its log before this event: let the last lines reach the file (a child
                # process still holding the pipe must not hold the result back, hence the bound).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._stderr_task), LOG_END_WAIT_S)
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
        with self.log_path.open("ab") as log:
            async for raw in self.process.stderr:
                log.write(raw)
                line = raw.decode(errors="replace").rstrip()
                if line:
                    self._tail.append(line)

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
