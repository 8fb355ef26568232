"""One job on a GPU node: the Ray actor the head starts there (engine/cluster/ray_lane.py).

It unpacks the job's inputs into a folder of its own, runs the same worker process a job gets on one box
(`python -m engine.worker`, its JSON events on stdout, its log on stderr) with the spec's folders pointed
there, and hands the head, each time it asks (`poll`), the events, log lines and changed files since the
last time. Files go back with the event that names them: before an `artifact` (an epoch file and its
resume state), `artifact_moved` or `done` event is passed on, what the job wrote is collected, so that the
head has the file before it hears of it. Paths in events are sent relative to the project folder.

The worker's stdin stays open while this actor lives: if the actor or its node dies, the worker exits.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from engine.cluster.transfer import changes_since, scan, unpack_inputs
from engine.jobs.context import JobSpec
from engine.worker import END_OF_JOB

SYNC_EVENTS = ("artifact", "artifact_moved", "done")


class NodeJob:
    def __init__(self) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix="lorabake-node-job-"))
        self._project = self._folder / "project"
        self._lock = threading.Condition()
        self._events: list[dict[str, Any]] = []
        self._log: list[str] = []
        self._changed: dict[str, bytes | None] = {}   # path → its new bytes, or None: removed
        self._snapshot: dict[str, tuple[int, int]] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._readers: list[threading.Thread] = []

    def where(self) -> str:
        """This node, as `/lora queue` names it: its Ray node name (`ray start --node-name`; by default its
        address)."""
        import ray  # present: this runs inside a Ray actor

        node_id = ray.get_runtime_context().get_node_id()
        names = [node.get("NodeName") for node in ray.nodes() if node.get("NodeID") == node_id]
        return str(names[0] if names and names[0] else socket.gethostname())

    def start(self, spec_json: str, inputs: bytes) -> None:
        spec = JobSpec.from_json(spec_json)
        if spec.project_dir is not None:
            unpack_inputs(inputs, self._project)
            self._snapshot = scan(self._project)
        (self._folder / "data").mkdir()
        spec.data_dir = str(self._folder / "data")
        spec.project_dir = str(self._project) if spec.project_dir is not None else None
        self._process = subprocess.Popen(
            [sys.executable, "-m", "engine.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=self._folder, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self._process.stdin is not None
        self._process.stdin.write((spec.to_json() + "\n").encode())
        self._process.stdin.flush()
        self._readers = [threading.Thread(target=self._read_events, daemon=True),
                         threading.Thread(target=self._read_log, daemon=True)]
        for reader in self._readers:
            reader.start()

    def poll(self, wait_s: float) -> dict[str, Any]:
        """What happened since the last poll (waiting up to `wait_s` for something); `exit` is the worker's
        exit code once it has ended and everything it said has been handed over."""
        with self._lock:
            self._lock.wait_for(lambda: self._events or self._changed or self._ended(), timeout=wait_s)
            events, self._events = self._events, []
            log, self._log = self._log, []
            changed, self._changed = self._changed, {}
            ended = self._ended()
        assert self._process is not None
        return {"events": events, "log": log,
                "files": [(path, data) for path, data in changed.items() if data is not None],
                "removed": [path for path, data in changed.items() if data is None],
                "exit": self._process.returncode if ended else None}

    def cancel(self, grace_s: float) -> None:
        """SIGTERM to the worker's process group, SIGKILL after `grace_s`."""
        if self._process is None or self._process.poll() is not None:
            return
        _signal_group(self._process.pid, signal.SIGTERM)
        try:
            self._process.wait(grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(self._process.pid, signal.SIGKILL)
            self._process.wait()

    def close(self) -> None:
        """Ends the worker (if it still runs) and removes the job's folder."""
        self.cancel(0)
        shutil.rmtree(self._folder, ignore_errors=True)

    def _ended(self) -> bool:
        return self._process is not None and self._process.poll() is not None \
            and not any(reader.is_alive() for reader in self._readers)

    def _read_events(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for raw in self._process.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                event = {"type": "log", "level": "info", "message": raw.decode(errors="replace").rstrip()}
            for key in ("path", "old", "new"):
                if isinstance(event.get(key), str):
                    event[key] = self._relative(event[key])
            with self._lock:
                if event.get("type") in SYNC_EVENTS:
                    self._collect_changes()
                self._events.append(event)
                self._lock.notify_all()
        self._process.wait()
        with self._lock:
            self._collect_changes()
            self._lock.notify_all()

    def _read_log(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        for raw in self._process.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            if line == END_OF_JOB:
                continue
            with self._lock:
                self._log.append(line)
                self._lock.notify_all()

    def _collect_changes(self) -> None:
        changes, self._snapshot = changes_since(self._project, self._snapshot)
        self._changed.update(changes.files)
        self._changed.update(dict.fromkeys(changes.removed))

    def _relative(self, path: str) -> str:
        """A path inside the project folder, relative to it (the head puts it inside its own copy); any
        other path is sent as given and the head refuses it."""
        try:
            return Path(path).resolve().relative_to(self._project.resolve()).as_posix()
        except ValueError:
            return path


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)
