"""A project's pictures outside intake (engine/intake): staging for pictures that arrive before the member
has picked a project, the tagging job's captions into the database, pictures a crash left without rows, and
small previews for Discord."""
from __future__ import annotations

import io
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from PIL import Image

from engine.errors import NotFound
from engine.intake import IncomingFile
from storage import images as image_rows
from storage import projects as project_rows
from storage.db import Database
from storage.jobs import JobRow
from storage.layout import DataLayout, atomic_write_bytes

STAGING_TTL_S = 3600


async def store_tag_result(db: Database, job: JobRow, result: dict[str, Any]) -> dict[str, Any]:
    """The tag job wrote `.txt` files; this puts the same captions into the database. The per-image
    captions are dropped from the job's result (the database holds them now)."""
    captions: dict[str, dict[str, str]] = result.pop("captions", {})
    stored = 0
    if job.project_id is not None:
        ids = {(row.kind, row.filename): row.id for row in await image_rows.list_for_project(db, job.project_id)}
        async with db.transaction() as tx:
            for kind, by_file in captions.items():
                for filename, text in by_file.items():
                    image_id = ids.get((kind, filename))
                    if image_id is not None:
                        await image_rows.set_caption(tx, image_id, text)
                        stored += 1
    return {**result, "captioned": stored}


async def sweep_orphan_images(db: Database, layout: DataLayout) -> list[str]:
    """Removes pictures (and their captions) that a crash left in dataset/ or reg/ without a row:
    intake writes the file before the row, and kohya would otherwise train on a picture we forgot."""
    removed: list[str] = []
    for project in await project_rows.list_all(db):
        dirs = layout.project(project.user_id, project.dir_name)
        known = {(row.kind, row.filename) for row in await image_rows.list_for_project(db, project.id)}
        for kind in ("train", "reg"):
            folder = dirs.pictures(kind)
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if path.suffix.lower() == ".png" and (kind, path.name) not in known:
                    path.unlink(missing_ok=True)
                    path.with_suffix(".txt").unlink(missing_ok=True)
                    removed.append(str(path))
    return removed


def jpeg_preview(path: Path, max_side: int) -> bytes:
    with Image.open(path) as image:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.convert("RGB").save(out, "JPEG", quality=85)
    return out.getvalue()


class Staging:
    """Pictures held for a member between "Apps → Add to LoRA project" and their choice of project
    (the message's attachments cannot be fetched again later without the message-content intent)."""

    def __init__(self, layout: DataLayout) -> None:
        self._root = layout.root / "staging"

    def put(self, user_id: int, files: list[IncomingFile]) -> str:
        token = f"{user_id}-{secrets.token_hex(8)}"
        folder = self._root / token
        for index, file in enumerate(files):
            atomic_write_bytes(folder / f"{index:03d}", file.data)
            (folder / f"{index:03d}.name").write_text(file.name, encoding="utf-8")
        return token

    def take(self, user_id: int, token: str) -> list[IncomingFile]:
        """The staged files (then forgotten); NotFound if they expired or belong to someone else."""
        folder = self._root / token
        if not token.startswith(f"{user_id}-") or "/" in token or not folder.is_dir():
            raise NotFound("those pictures are no longer waiting (they are kept for an hour): "
                           "use Apps → Add to LoRA project on the message again")
        files = [IncomingFile((path.with_suffix(".name")).read_text(encoding="utf-8"), path.read_bytes())
                 for path in sorted(folder.iterdir()) if not path.suffix]
        shutil.rmtree(folder, ignore_errors=True)
        return files

    def expire(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        removed = 0
        if self._root.is_dir():
            for folder in self._root.iterdir():
                if now - folder.stat().st_mtime > STAGING_TTL_S:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed += 1
        return removed
