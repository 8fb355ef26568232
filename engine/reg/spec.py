"""What a reg-images request renders, and how a later run knows which pictures are already done.

Picture i (from 0) of a request is rendered with seed `seed + i` and named `reg-<key>-<i+1:04d>.png`,
where `key` is a short hash of everything that changes its pixels (model, prompts, steps, guidance,
size, base seed). So the same request asked again names the same files, and a run that was cancelled
or killed renders only the names that are missing; another prompt gets other names and never
overwrites these. `reg/manifest.json` records, per file, what it was rendered with.

Rendered pictures wait in `<project>/reg-pending/` until the engine has registered them (file first,
then row, as storage.layout requires): a picture in reg/ without a row is an orphan that the start-up
sweep deletes, so unregistered work must not live there, or a restart would throw it away.
This module imports neither torch nor diffusers: the engine uses it to count what a request will add.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.layout import atomic_write_text

log = logging.getLogger(__name__)

PENDING_DIR = "reg-pending"
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


def class_prompt(quality_prompt: str, subject: str) -> str:
    """The quality words, then the subject (the project's class, or what the member typed)."""
    return ", ".join(part for part in (quality_prompt.strip(), subject.strip()) if part)


@dataclass(frozen=True)
class RegSpec:
    base_model: str             # as [models] names it
    prediction: str | None      # forced prediction type, None = what the model says
    prompt: str                 # exactly what the pipeline gets
    negative_prompt: str
    count: int
    steps: int
    guidance: float
    width: int
    height: int
    seed: int                   # picture i gets seed + i
    batch_size: int

    def check(self) -> None:
        """Job params arrive as JSON: the worker checks them again (the API has already told the member)."""
        if not self.prompt.strip():
            raise ValueError("the reg prompt is empty")
        if not 1 <= self.count <= 10_000 or not 1 <= self.batch_size <= 64:
            raise ValueError(f"reg count must be 1–10000 and batch size 1–64, got {self.count} and {self.batch_size}")
        if not 1 <= self.steps <= 150 or not 0.0 <= self.guidance <= 30.0:
            raise ValueError(f"reg steps must be 1–150 and guidance 0–30, got {self.steps} and {self.guidance}")
        for side in (self.width, self.height):
            if side % 8 or not 64 <= side <= 2048:
                raise ValueError(f"reg pictures must be 64–2048 px and a multiple of 8 each way, "
                                 f"got {self.width}×{self.height}")

    @property
    def key(self) -> str:
        """8 hex digits naming the settings that change pixels (not count or batch size)."""
        settings = [self.base_model, self.prediction, self.prompt, self.negative_prompt, self.steps,
                    float(self.guidance), self.width, self.height, self.seed]
        return hashlib.sha256(json.dumps(settings).encode("utf-8")).hexdigest()[:8]

    def filename(self, index: int) -> str:
        return f"reg-{self.key}-{index + 1:04d}.png"

    def seed_for(self, index: int) -> int:
        return self.seed + index

    def filenames(self) -> list[str]:
        return [self.filename(i) for i in range(self.count)]

    def entry(self, index: int) -> dict[str, Any]:
        """The manifest record of picture `index`: enough to render it again elsewhere."""
        return {"prompt": self.prompt, "negative_prompt": self.negative_prompt, "steps": self.steps,
                "guidance": float(self.guidance), "width": self.width, "height": self.height,
                "seed": self.seed_for(index), "base_model": self.base_model, "prediction": self.prediction}

    def to_params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> RegSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})


class Manifest:
    """`reg/manifest.json`: file name → what it was rendered with. Written after every batch."""

    def __init__(self, path: Path, files: dict[str, dict[str, Any]]) -> None:
        self.path = path
        self.files = files

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            files = data["files"] if isinstance(data, dict) and isinstance(data.get("files"), dict) else None
        except FileNotFoundError:
            files = {}
        except (OSError, ValueError, KeyError) as error:
            files = None
            log.warning("%s is unreadable (%s)", path, error)
        if files is None:
            # Only the "already rendered" shortcut is lost: pictures waiting there are rendered again.
            log.warning("starting a new %s: pictures not yet registered will be rendered again", path.name)
            files = {}
        return cls(path, files)

    def matches(self, name: str, entry: dict[str, Any]) -> bool:
        return self.files.get(name) == entry

    def record(self, name: str, entry: dict[str, Any]) -> None:
        self.files[name] = entry

    def prune(self, exists: Callable[[str], bool]) -> int:
        """Forgets files that are gone (removed by the member, or stale pending work)."""
        gone = [name for name in self.files if not exists(name)]
        for name in gone:
            del self.files[name]
        return len(gone)

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps({"version": MANIFEST_VERSION, "files": self.files}, indent=1,
                                                sort_keys=True))


@dataclass(frozen=True)
class RegFolders:
    reg: Path        # registered pictures (and the manifest)
    pending: Path    # rendered, waiting for their rows

    @classmethod
    def of(cls, project_dir: Path) -> RegFolders:
        return cls(project_dir / "reg", project_dir / PENDING_DIR)

    def manifest(self) -> Manifest:
        return Manifest.load(self.reg / MANIFEST_NAME)


@dataclass(frozen=True)
class Work:
    """Where each picture of a request stands before a run."""
    to_render: list[int]     # indices with no finished file
    pending: list[int]       # rendered, waiting to be registered (and tagged)
    registered: list[int]    # already in reg/


def survey(spec: RegSpec, folders: RegFolders, manifest: Manifest) -> Work:
    """A file counts as done only if the manifest says it was rendered with these very settings: the
    file is written before its manifest entry, so a kill in between leaves a file that is redone."""
    to_render, pending, registered = [], [], []
    for index, name in enumerate(spec.filenames()):
        if not manifest.matches(name, spec.entry(index)):
            to_render.append(index)
        elif (folders.reg / name).is_file():
            registered.append(index)
        elif (folders.pending / name).is_file():
            pending.append(index)
        else:
            to_render.append(index)
    return Work(to_render, pending, registered)
