"""The curation service: ops applied to a project's captions, with an undo/redo history that lives in
the database and so survives restarts.

Captions live twice: in the `captions` table and in `<image stem>.txt` beside each picture (what kohya
trains from). The database is the truth. A write commits the captions, the trigger word and the
history entry in one transaction, then rewrites the changed `.txt` files atomically; a crash between
the two is repaired by `sync_files`, which the engine runs at start (before any job can write files).

History: each entry keeps only the captions it changed, before and after. Undo writes `before` back
(and the trigger word), redo writes `after`; a new op discards what was undone. An op that changes
nothing is not recorded. If a caption was changed outside curation since an entry (a re-tag writes
captions without history), undoing it would silently throw that work away: the history is cleared
instead and the member is told. Pictures deleted since an entry are skipped.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from engine.curation.ops import REG, TRAIN, CaptionSet, Op, TokenCounter
from engine.errors import Invalid, NotFound, SetupError
from storage import curation as history_rows
from storage import images as image_rows
from storage import projects as project_rows
from storage.curation import Captions
from storage.db import Database, Tx
from storage.layout import DataLayout, atomic_write_text
from storage.projects import ProjectRow

HISTORY_LIMIT = 100  # entries kept per project (undone ones included); older ones can no longer be undone


@dataclass(frozen=True)
class OpResult:
    description: str   # one line for the member
    changed: int       # captions written
    trigger: str       # the project's trigger word afterwards
    can_undo: bool
    can_redo: bool


@dataclass(frozen=True)
class HistoryEntry:
    id: int
    kind: str          # 'train' | 'reg'
    op: str            # the op's name, e.g. 'remove_tags'
    description: str
    changed: int
    trigger_before: str
    trigger_after: str
    state: str         # 'done' (can be undone) | 'undone' (can be redone)
    created_at: float


@dataclass(frozen=True)
class _Pictures:
    """One picture set of a project: every picture's caption (None: none) and its caption file."""
    captions: Captions
    files: dict[int, Path]


class Curation:
    def __init__(self, db: Database, layout: DataLayout) -> None:
        self._db = db
        self._layout = layout
        # Files are written after the commit: two writes racing could leave the older text in a file.
        self._lock = asyncio.Lock()

    async def apply(self, project: ProjectRow, op: Op, kind: str = TRAIN, *,
                    count_tokens: TokenCounter | None = None) -> OpResult:
        """Runs `op` on the project's `kind` set. count_tokens: the text encoder's tokenizer, so a
        trigger word longer than it reads is refused."""
        if kind not in (TRAIN, REG):
            raise Invalid(f"unknown picture set {kind!r}: use 'train' or 'reg'")
        async with self._lock:
            async with self._db.transaction() as tx:
                row = await _reload(tx, project)
                pictures = await self._pictures(tx, row, kind)
                outcome = op.apply(CaptionSet(kind, row.trigger, pictures.captions, count_tokens))
                if outcome.captions or outcome.trigger != row.trigger:
                    await _write_rows(tx, row, outcome.captions, outcome.trigger)
                    await history_rows.discard_undone(tx, row.id)
                    await history_rows.insert(
                        tx, project_id=row.id, kind=kind, op=op.to_dict(), description=outcome.description,
                        captions_before={image_id: pictures.captions[image_id] for image_id in outcome.captions},
                        captions_after=dict(outcome.captions), trigger_before=row.trigger,
                        trigger_after=outcome.trigger)
                    await history_rows.keep_newest(tx, row.id, HISTORY_LIMIT)
                done, undone = await history_rows.counts(tx, row.id)
            await _write_files(pictures.files, outcome.captions)
        return OpResult(outcome.description, len(outcome.captions), outcome.trigger, done > 0, undone > 0)

    async def undo(self, project: ProjectRow) -> OpResult:
        return await self._step(project, undo=True)

    async def redo(self, project: ProjectRow) -> OpResult:
        return await self._step(project, undo=False)

    async def history(self, project: ProjectRow, limit: int = 20) -> list[HistoryEntry]:
        """Newest first."""
        return [
            HistoryEntry(row.id, row.kind, row.op["op"], row.description, len(row.captions_after),
                         row.trigger_before, row.trigger_after, row.state, row.created_at)
            for row in await history_rows.newest(self._db, project.id, limit)
        ]

    async def sync_files(self, project: ProjectRow | None = None) -> int:
        """Makes every caption file agree with the database (all projects, or one): rewrites the ones
        that differ or are missing, removes those of pictures without a caption. Returns how many
        files it touched. Run it when no job writes captions (at start)."""
        touched = 0
        async with self._lock:
            for row in [project] if project else await project_rows.list_all(self._db):
                for kind in (TRAIN, REG):
                    pictures = await self._pictures(self._db, row, kind)
                    touched += await asyncio.to_thread(_sync_folder, pictures)
        return touched

    async def _step(self, project: ProjectRow, *, undo: bool) -> OpResult:
        verb = "undo" if undo else "redo"
        async with self._lock:
            async with self._db.transaction() as tx:
                row = await _reload(tx, project)
                entry = await (history_rows.last_done if undo else history_rows.first_undone)(tx, row.id)
                if entry is None:
                    raise Invalid(f"nothing to {verb}")
                if undo:
                    expected, target = entry.captions_after, entry.captions_before
                    trigger_expected, trigger_target = entry.trigger_after, entry.trigger_before
                else:
                    expected, target = entry.captions_before, entry.captions_after
                    trigger_expected, trigger_target = entry.trigger_before, entry.trigger_after
                pictures = await self._pictures(tx, row, entry.kind)
                live = {image_id: text for image_id, text in target.items() if image_id in pictures.captions}
                stale = row.trigger != trigger_expected or any(
                    pictures.captions[image_id] != expected[image_id] for image_id in live)
                if stale:
                    await history_rows.clear(tx, row.id)
                else:
                    await _write_rows(tx, row, live, trigger_target)
                    await history_rows.set_state(tx, entry.id, "undone" if undo else "done")
                done, undone = await history_rows.counts(tx, row.id)
            if stale:
                raise Invalid(f"cannot {verb} “{entry.description}”: the captions were changed outside curation "
                              "since (re-tagged?), so the undo history no longer matches them and was cleared")
            await _write_files(pictures.files, live)
        return OpResult(f"{'undid' if undo else 'redid'}: {entry.description}", len(live), trigger_target,
                        done > 0, undone > 0)

    async def _pictures(self, db: Database | Tx, project: ProjectRow, kind: str) -> _Pictures:
        dirs = self._layout.project(project.user_id, project.dir_name)
        folder = dirs.pictures(kind)
        images = await image_rows.list_for_project(db, project.id, kind)
        captions = await image_rows.captions(db, project.id, kind)
        return _Pictures({image.id: captions.get(image.id) for image in images},
                         {image.id: (folder / image.filename).with_suffix(".txt") for image in images})


async def _reload(tx: Tx, project: ProjectRow) -> ProjectRow:
    """The project as it is now: the caller's row may hold a trigger word changed since."""
    row = await project_rows.get_by_id(tx, project.id)
    if row is None:
        raise NotFound(f"project {project.name} no longer exists")
    return row


async def _write_rows(tx: Tx, project: ProjectRow, captions: Captions, trigger: str) -> None:
    for image_id, text in captions.items():
        if text is None:
            await history_rows.delete_caption(tx, image_id)
        else:
            await image_rows.set_caption(tx, image_id, text)
    if trigger != project.trigger:
        await history_rows.set_trigger(tx, project.id, trigger)


async def _write_files(files: dict[int, Path], captions: Captions) -> None:
    try:
        await asyncio.to_thread(_write_caption_files, files, captions)
    except OSError as error:
        raise SetupError(f"the captions are saved, but writing their .txt files failed ({error}): free some "
                         "disk space or fix the data folder; lorabake rewrites them when it restarts") from None


def _write_caption_files(files: dict[int, Path], captions: Captions) -> None:
    for image_id, text in captions.items():
        if text is None:
            files[image_id].unlink(missing_ok=True)
        else:
            atomic_write_text(files[image_id], text)


def _sync_folder(pictures: _Pictures) -> int:
    touched = 0
    for image_id, path in pictures.files.items():
        text = pictures.captions[image_id]
        if text is None:
            if path.exists():
                path.unlink()
                touched += 1
        elif _read(path) != text:
            atomic_write_text(path, text)
            touched += 1
    return touched


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
