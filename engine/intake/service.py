"""add_images: every file of one upload (zips unpacked) is validated, normalised, checked against the
project's pictures for duplicates and quotas, and stored, in the member's order, each with its own
outcome: a file that fails never costs the others, nor anything stored before."""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import sqlite3
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.config import IntakeConfig
from engine.intake.decode import open_picture
from engine.intake.normalise import Prepared, normalise
from engine.intake.phash import distance
from engine.intake.report import Accepted, IncomingFile, IntakeReport, Refused, Rejected
from engine.intake.storing import Folder
from engine.intake.zips import ZipEntry, ZipUpload, is_zip
from storage import images
from storage.db import Database
from storage.layout import ProjectDirs

log = logging.getLogger(__name__)

_KIND_WORDS = {"train": "training", "reg": "regularization"}
# Files prepared ahead in worker threads while earlier ones are checked and stored. PNG encoding, most of
# the time per file, releases the GIL, so this scales with cores; half of them, so that a training job
# beside us keeps its share. Each file in flight may hold a decoded picture of up to max_pixels.
_AHEAD = max(2, min(4, (os.cpu_count() or 2) // 2))
# One upload at a time per folder in this process, so two uploads cannot both pass the quota, miss each
# other's duplicates or pick the same file name.
_folder_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


@dataclass(frozen=True)
class _Item:
    name: str                          # the member's name, shown in the report
    name_for_file: str                 # what the stored file name is made from
    data: bytes = b""                  # a file sent as it is…
    archive: ZipUpload | None = None   # …or an entry of a zip, inflated only when its turn comes
    entry: ZipEntry | None = None
    refused: str | None = None

    def read(self) -> bytes:
        return self.archive.read(self.entry) if self.archive and self.entry else self.data


@dataclass
class _Project:
    """What each file is checked against: the stored pictures of this kind plus those accepted so far."""
    count: int
    user_count: int
    by_sha: dict[str, str] = field(default_factory=dict)            # sha256 → filename
    hashes: list[tuple[str, str]] = field(default_factory=list)     # (phash, filename)

    def add(self, prepared: Prepared, filename: str) -> None:
        self.count += 1
        self.user_count += 1
        self.by_sha[prepared.sha256] = filename
        self.hashes.append((prepared.phash, filename))

    def room(self, limits: IntakeConfig) -> int:
        return min(limits.max_images_per_project - self.count, limits.max_images_per_user - self.user_count)


async def add_images(db: Database, dirs: ProjectDirs, project_id: int, user_id: int, kind: str,
                     files: list[IncomingFile], limits: IntakeConfig,
                     progress: Callable[[int, int], None] | None = None) -> IntakeReport:
    if kind not in _KIND_WORDS:
        raise ValueError(f"unknown image kind {kind!r}")
    report = IntakeReport()
    items = await asyncio.to_thread(_unpack, files, limits)
    if not items:
        return report
    path = dirs.pictures(kind)
    lock = _folder_locks.setdefault(str(path), asyncio.Lock())
    async with lock:
        rows = await images.list_for_project(db, project_id, kind)
        project = _Project(len(rows), await images.count_for_user(db, user_id))
        for row in rows:
            project.by_sha[row.sha256] = row.filename
            if row.phash:
                project.hashes.append((row.phash, row.filename))
        intake = _Intake(db, Folder(path, (row.filename for row in rows)), project, project_id, kind, limits)
        pending: dict[int, asyncio.Task[Prepared]] = {}
        try:
            for index, item in enumerate(items):
                intake.prepare_ahead(items, index, pending)
                try:
                    report.accepted.append(await intake.take(item, pending.pop(index, None)))
                except Refused as refused:
                    report.rejected.append(Rejected(item.name, refused.reason))
                if progress is not None:
                    progress(index + 1, len(items))
        finally:
            for task in pending.values():   # only left when cancelled or failing: drop the work in flight
                task.cancel()
            await asyncio.gather(*pending.values(), return_exceptions=True)
    return report


@dataclass
class _Intake:
    db: Database
    folder: Folder
    project: _Project
    project_id: int
    kind: str
    limits: IntakeConfig
    decoded_pixels: int = 0

    def prepare_ahead(self, items: list[_Item], index: int, pending: dict[int, asyncio.Task[Prepared]]) -> None:
        """Starts preparing the next files, but only as many as the quotas could still take, so that no
        file being prepared is later turned away for the quota."""
        room = self.project.room(self.limits) - len(pending)
        for ahead in range(index, min(index + _AHEAD, len(items))):
            if room <= 0 or self._budget_spent():
                return
            if ahead not in pending and items[ahead].refused is None:
                pending[ahead] = asyncio.create_task(asyncio.to_thread(_prepare, items[ahead], self.limits))
                room -= 1

    async def take(self, item: _Item, prepared_task: asyncio.Task[Prepared] | None) -> Accepted:
        if item.refused is not None:
            raise Refused(item.refused)
        if prepared_task is None:       # not started ahead: only when the quotas or the budget are spent
            self._check_quota()
            self._check_budget(0)
            prepared_task = asyncio.create_task(asyncio.to_thread(_prepare, item, self.limits))
        try:
            prepared = await prepared_task
        except Refused:
            raise
        except Exception:
            log.exception("intake failed on %r", item.name)
            raise Refused("something went wrong on our side while reading it: try again, or send it as a PNG "
                          "or JPEG (the server log has the details)") from None
        self._check_budget(prepared.decoded_pixels)
        self._check_duplicate(prepared)
        filename = self.folder.new_name(item.name_for_file)
        try:
            await self._store_uninterrupted(prepared, filename, item.name)
        except (OSError, sqlite3.Error) as error:
            log.exception("could not store %r as %s", item.name, filename)
            if isinstance(error, OSError) and error.errno == errno.ENOSPC:
                raise Refused("the server's disk is full: tell the server owner, then upload it again") from None
            raise Refused("it could not be saved on the server: upload it again in a while") from None
        self.project.add(prepared, filename)
        return Accepted(item.name, filename, prepared.width, prepared.height, prepared.notes)

    def _budget_spent(self) -> bool:
        return self.decoded_pixels >= self.limits.max_upload_megapixels * 1_000_000

    def _check_budget(self, pixels: int) -> None:
        """Counts a decoded picture against the upload's budget; refuses it, and every file after the budget
        is spent (those without decoding them), so one upload's decoding work stays bounded. In the
        member's order: which files are refused never depends on timing."""
        budget = self.limits.max_upload_megapixels
        over = self._budget_spent() or self.decoded_pixels + pixels > budget * 1_000_000
        self.decoded_pixels += pixels
        if over:
            raise Refused(f"this upload's pictures already add up to {budget:,} megapixels, the most one upload "
                          "may decode: send this and the files after it in another upload")

    async def _store_uninterrupted(self, prepared: Prepared, filename: str, source: str) -> None:
        """A cancelled upload still finishes the file it is storing (file and row, or neither): cancelling
        halfway could leave a committed row whose file was removed, or a file written after its row was
        rolled back, and would give up the folder lock with a write in flight."""
        storing = asyncio.create_task(self.folder.store(self.db, prepared, filename, project_id=self.project_id,
                                                        kind=self.kind, source=source))
        try:
            await asyncio.shield(storing)
        except asyncio.CancelledError:
            await asyncio.wait([storing])
            if not storing.cancelled():
                storing.exception()   # retrieved, so it is not reported as lost: the cancellation wins
            raise

    def _check_quota(self) -> None:
        project, limits = self.project, self.limits
        if project.count >= limits.max_images_per_project:
            raise Refused(f"the project already has {project.count} {_KIND_WORDS[self.kind]} pictures, the most "
                          f"this server allows ({limits.max_images_per_project}): remove some before adding more")
        if project.user_count >= limits.max_images_per_user:
            raise Refused(f"you already have {project.user_count} pictures across your projects, the most this "
                          f"server allows ({limits.max_images_per_user}): delete pictures or projects you no "
                          "longer need")

    def _check_duplicate(self, prepared: Prepared) -> None:
        same = self.project.by_sha.get(prepared.sha256)
        if same is not None:
            raise Refused(f"already in the project as {same}: no need to upload it again")
        for other_hash, filename in self.project.hashes:
            if distance(prepared.phash, other_hash) <= self.limits.near_duplicate_distance:
                raise Refused(f"looks the same as {filename} already in the project (a near-duplicate teaches the "
                              "model nothing new): leave it out, or remove the other one first if this copy is "
                              "better")


def _prepare(item: _Item, limits: IntakeConfig) -> Prepared:
    """Runs in a worker thread: everything CPU-heavy (inflating, decoding, resizing, hashing, encoding)."""
    return normalise(open_picture(item.read(), limits), limits)


def _unpack(files: list[IncomingFile], limits: IntakeConfig) -> list[_Item]:
    """The upload as a flat list in the member's order, zips replaced by their entries. Runs in a
    worker thread (reading a zip's directory is CPU work)."""
    items: list[_Item] = []
    for upload in files:
        if not is_zip(upload):
            items.append(_Item(upload.name, upload.name, data=upload.data))
            continue
        try:
            archive = ZipUpload(upload, limits)
        except Refused as refused:
            items.append(_Item(upload.name, upload.name, refused=refused.reason))
            continue
        if not archive.entries:
            items.append(_Item(upload.name, upload.name,
                               refused="there are no pictures in the zip (only folders or system files): add the "
                                       "pictures and zip it again"))
        for entry in archive.entries:
            items.append(_Item(entry.name, entry.inner, archive=archive, entry=entry, refused=entry.refused))
    return items
