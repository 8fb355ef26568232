"""The engine-side end of a reg job (its JobKind on_done): each rendered picture waiting in
reg-pending/ is copied into reg/ with its caption file, then gets its "reg" row and caption in the
database, then leaves reg-pending/. File first, row after (storage.layout): a crash in between leaves
an orphan in reg/ that the start-up sweep removes, while the copy in reg-pending/ is registered by the
next run without being rendered again."""
from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from engine.intake.phash import phash
from engine.reg.spec import RegFolders
from storage import images as image_rows
from storage import projects as project_rows
from storage.db import Database
from storage.jobs import JobRow
from storage.layout import DataLayout, atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

# The names engine.reg.spec gives; anything else in a job's result is not ours to move.
_NAME = re.compile(r"^reg-[0-9a-f]{8}-\d{4,5}\.png$")


@dataclass(frozen=True)
class _Installed:
    sha256: str
    phash: str
    width: int
    height: int


async def store_reg_result(db: Database, job: JobRow, result: dict[str, Any]) -> dict[str, Any]:
    """Registers the job's pictures; the per-file list is dropped from the result (the rows hold it)."""
    files: dict[str, dict[str, Any]] = result.pop("files", {})
    project = await project_rows.get_by_id(db, job.project_id) if job.project_id is not None else None
    if project is None:
        return {**result, "added": 0}
    # The database lives at the data folder's root (DataLayout.db_path), which is all on_done is given.
    folders = RegFolders.of(DataLayout(db.path.parent).project(project.user_id, project.dir_name).root)
    known = {row.filename for row in await image_rows.list_for_project(db, project.id, "reg")}
    added = 0
    for name, info in sorted(files.items()):
        pending = folders.pending / name
        if not _NAME.match(name):
            log.warning("job %s: not registering %r, which is not a reg picture name", job.id, name)
            continue
        if name in known:
            # Registered by an earlier run that stopped before it could tidy up.
            await asyncio.to_thread(_discard, pending)
            continue
        if not pending.is_file():
            log.warning("job %s: %s vanished before it could be registered", job.id, pending)
            continue
        caption = str(info.get("caption", ""))
        target = folders.reg / name
        installed = await asyncio.to_thread(_install, pending, target, caption)
        try:
            async with db.transaction() as tx:
                image_id = await image_rows.insert(
                    tx, project_id=project.id, kind="reg", filename=name, sha256=installed.sha256,
                    phash=installed.phash, width=installed.width, height=installed.height,
                    source=f"rendered by the base model, seed {info.get('seed')}")
                await image_rows.set_caption(tx, image_id, caption)
        except BaseException:
            # No row, no file: the pending copy stays for the next run.
            target.unlink(missing_ok=True)
            target.with_suffix(".txt").unlink(missing_ok=True)
            raise
        await asyncio.to_thread(_discard, pending)
        added += 1
    return {**result, "added": added}


def _install(pending: Path, target: Path, caption: str) -> _Installed:
    data = pending.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        width, height = image.size
        hashed = phash(image)
    # The caption before the picture: kohya never sees the picture without its caption.
    atomic_write_text(target.with_suffix(".txt"), caption)
    atomic_write_bytes(target, data)
    return _Installed(hashlib.sha256(data).hexdigest(), hashed, width, height)


def _discard(pending: Path) -> None:
    pending.with_suffix(".txt").unlink(missing_ok=True)
    pending.unlink(missing_ok=True)
