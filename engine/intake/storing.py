"""Where an accepted picture goes: a fresh, safe file name in dataset/ or reg/, the file written
crash-safely first, then its row (see storage.layout for why in that order)."""
from __future__ import annotations

import asyncio
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from engine.intake.normalise import Prepared
from storage import images
from storage.db import Database
from storage.layout import atomic_write_bytes

_SEQUENCE = re.compile(r"^(\d+)(?=[_.])")
_SLUG_LENGTH = 40


def slug(name: str) -> str:
    """The stem of the member's file name as lower-case ASCII letters, digits and underscores:
    "../Ünïcode Pic (1).JPG" → "unicode_pic_1". Never empty, never a path."""
    base = PurePosixPath(name.replace("\\", "/")).name
    stem = base.rsplit(".", 1)[0] if "." in base[1:] else base
    ascii_text = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")[:_SLUG_LENGTH].strip("_")
    return text or "image"


class Folder:
    """dataset/ or reg/ of one project. Names are "<sequence>_<slug>.png"; the sequence continues after
    the highest number in use by any file there (captions included) or any row, so a new picture never
    takes the name of an old caption or of a row whose file went missing."""

    def __init__(self, path: Path, row_filenames: Iterable[str]) -> None:
        self.path = path
        names = [*row_filenames, *(entry.name for entry in path.iterdir())] if path.is_dir() else list(row_filenames)
        numbers = [int(match.group(1)) for name in names if (match := _SEQUENCE.match(name))]
        self._next = max(numbers, default=0) + 1

    def new_name(self, member_name: str) -> str:
        while True:
            filename = f"{self._next:04d}_{slug(member_name)}.png"
            self._next += 1
            if not (self.path / filename).exists():
                return filename

    async def store(self, db: Database, prepared: Prepared, filename: str, *, project_id: int, kind: str,
                    source: str) -> None:
        path = self.path / filename
        await asyncio.to_thread(atomic_write_bytes, path, prepared.png)
        try:
            async with db.transaction() as tx:
                await images.insert(tx, project_id=project_id, kind=kind, filename=filename,
                                    sha256=prepared.sha256, phash=prepared.phash, width=prepared.width,
                                    height=prepared.height, source=source)
        except BaseException:
            # No row, no file: a failed insert leaves nothing behind.
            path.unlink(missing_ok=True)
            raise
