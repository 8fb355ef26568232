"""What a job function sees inside the worker process: where it works and how it reports."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any


class JobFailed(Exception):
    """A failure the member can act on (e.g. "CUDA ran out of memory: lower the batch size")."""


@dataclass
class JobSpec:
    job_id: int
    kind: str
    entry: str
    params: dict[str, Any]
    data_dir: str
    project_dir: str | None
    attempt: int

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        return cls(**json.loads(text))


@dataclass
class JobContext:
    spec: JobSpec
    _out: IO[str] = field(repr=False)

    @property
    def params(self) -> dict[str, Any]:
        return self.spec.params

    @property
    def project_dir(self) -> Path:
        if self.spec.project_dir is None:
            raise JobFailed("this job needs a project")
        return Path(self.spec.project_dir)

    def emit(self, event_type: str, **data: Any) -> None:
        self._out.write(json.dumps({"type": event_type, "ts": time.time(), **data}) + "\n")
        self._out.flush()

    def progress(self, step: int, total: int, message: str = "", **extra: Any) -> None:
        self.emit("progress", step=step, total=total, message=message, **extra)

    def log(self, message: str, level: str = "info") -> None:
        self.emit("log", level=level, message=message)

    def artifact(self, kind: str, path: Path) -> None:
        """Registers a file the job wrote (inside the project folder) as something the user can fetch."""
        self.emit("artifact", kind=kind, path=str(path))

    def artifact_moved(self, old: Path, new: Path) -> None:
        """A registered file moved (inside the project folder): what names it follows it."""
        self.emit("artifact_moved", old=str(old), new=str(new))
