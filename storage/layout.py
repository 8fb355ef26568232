"""The on-disk layout (kohya-compatible) and crash-safe file writes.

    <data_dir>/lorabake.db
    <data_dir>/users/<user_id>/<project dir>/{dataset,reg,output,samples}/
    <data_dir>/logs/job-<id>.log
    <data_dir>/trash/              folders being deleted (emptied on start)

The rule that keeps rows and files consistent: a row is committed only after its files are in place
(written to a temp name, then renamed), and files are removed only after the row is gone. A crash can
therefore leave unreferenced files behind, never a row without its files; `sweep_orphans` removes them.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

PROJECT_SUBDIRS = ("dataset", "reg", "output", "samples")


@dataclass(frozen=True)
class ProjectDirs:
    root: Path

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    @property
    def reg(self) -> Path:
        return self.root / "reg"

    def pictures(self, kind: str) -> Path:
        """The folder of a picture set: dataset/ for 'train', reg/ for 'reg'."""
        if kind not in ("train", "reg"):
            raise ValueError(f"unknown picture set {kind!r}")
        return self.dataset if kind == "train" else self.reg

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def samples(self) -> Path:
        return self.root / "samples"


class DataLayout:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir

    @property
    def db_path(self) -> Path:
        return self.root / "lorabake.db"

    @property
    def users_dir(self) -> Path:
        return self.root / "users"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def trash_dir(self) -> Path:
        return self.root / "trash"

    def ensure(self) -> None:
        for path in (self.root, self.users_dir, self.logs_dir, self.trash_dir):
            path.mkdir(parents=True, exist_ok=True)

    def project(self, user_id: int, dir_name: str) -> ProjectDirs:
        return ProjectDirs(self.users_dir / str(user_id) / dir_name)

    def job_log(self, job_id: int) -> Path:
        return self.logs_dir / f"job-{job_id}.log"

    def create_project_dirs(self, user_id: int, dir_name: str) -> ProjectDirs:
        dirs = self.project(user_id, dir_name)
        for sub in PROJECT_SUBDIRS:
            (dirs.root / sub).mkdir(parents=True, exist_ok=True)
        return dirs

    def discard(self, path: Path) -> None:
        """Removes a folder: first an atomic rename into trash/, so a crash never leaves half a project
        where the project was; then the slow delete."""
        if not path.exists():
            return
        self.trash_dir.mkdir(parents=True, exist_ok=True)
        doomed = self.trash_dir / uuid.uuid4().hex
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def sweep_orphans(self, known_projects: set[tuple[int, str]]) -> list[Path]:
        """Deletes project folders with no database row and empties trash/. Call only at start-up,
        before anything can create a project. Returns what was removed."""
        removed: list[Path] = []
        if self.users_dir.is_dir():
            for user_dir in self.users_dir.iterdir():
                if not (user_dir.is_dir() and user_dir.name.isdigit()):
                    continue
                for project_dir in user_dir.iterdir():
                    if project_dir.is_dir() and (int(user_dir.name), project_dir.name) not in known_projects:
                        self.discard(project_dir)
                        removed.append(project_dir)
        if self.trash_dir.is_dir():
            for leftover in self.trash_dir.iterdir():
                shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink()
        return removed


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MB chunks (LoRA files and exports can be large)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes `data` to `path` so that readers (and a crash) see either the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
