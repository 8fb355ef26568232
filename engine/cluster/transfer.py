"""What moves between the head and a GPU node: a job's inputs out, its files back.

Out: the project's `dataset/`, `reg/` and `output/` folders (pictures, captions, reg pictures, earlier epoch
files and the state a training resumes from) as one uncompressed tar; the node unpacks it into a folder of
its own and runs the job there. Back: each file the job wrote or changed there, as (path relative to the
project, bytes), and the paths it removed, sent whenever the job reports a file (an epoch and its state
reach the head as soon as they are saved) and when it ends.

Nothing a node sends is trusted as a path or as a file: a returned path must be relative, inside one of the
project's folders, with no `..`, and each file is checked for its kind (a .safetensors file's header, a
PNG's signature, a JSON file's syntax) and size before it replaces anything in the project.
"""
from __future__ import annotations

import io
import json
import os
import struct
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from storage.layout import PROJECT_SUBDIRS, atomic_write_bytes

INPUT_FOLDERS = ("dataset", "reg", "output")
MAX_RETURNED_FILE_BYTES = 8 << 30        # an SDXL LoCon epoch at high rank is well under 1 GB
MAX_SAFETENSORS_HEADER_BYTES = 100 << 20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

Snapshot = dict[str, tuple[int, int]]      # relative path → (size, mtime in ns)


def pack_inputs(project_dir: Path) -> bytes:
    """The project's input folders as a tar (regular files only: a link is never followed or sent)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for relative in sorted(scan(project_dir, INPUT_FOLDERS)):
            tar.add(project_dir / relative, arcname=relative, recursive=False)
    return buffer.getvalue()


def unpack_inputs(data: bytes, into: Path) -> None:
    """Unpacks what `pack_inputs` made (tarfile's "data" filter refuses links, devices and paths outside)."""
    into.mkdir(parents=True, exist_ok=True)
    for folder in PROJECT_SUBDIRS:
        (into / folder).mkdir(exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(into, filter="data")


def scan(root: Path, folders: tuple[str, ...] = PROJECT_SUBDIRS) -> Snapshot:
    """The finished files under `root`'s folders (hidden names, such as a file being written, left out)."""
    found: Snapshot = {}
    for folder in folders:
        top = root / folder
        for directory, subdirs, files in os.walk(top):
            subdirs[:] = [name for name in subdirs if not name.startswith(".")]
            for name in files:
                path = Path(directory) / name
                if name.startswith(".") or path.is_symlink() or not path.is_file():
                    continue
                stat = path.stat()
                found[path.relative_to(root).as_posix()] = (stat.st_size, stat.st_mtime_ns)
    return found


@dataclass
class Changes:
    """What a job changed in its project folder since the last look."""
    files: list[tuple[str, bytes]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.files or self.removed)


def changes_since(root: Path, before: Snapshot) -> tuple[Changes, Snapshot]:
    """The files new or changed under `root` since `before` (with their bytes) and those removed; and the
    snapshot to compare with next time."""
    now = scan(root)
    changed = Changes(
        files=[(relative, (root / relative).read_bytes()) for relative, seen in sorted(now.items())
               if before.get(relative) != seen],
        removed=sorted(set(before) - set(now)),
    )
    return changed, now


class Rejected(ValueError):
    """A file or path a node sent back that the head does not take."""


def project_path(project_dir: Path, relative: str) -> Path:
    """Where a node's relative path lands in the project; Rejected unless it is plainly inside one of the
    project's folders."""
    posix = PurePosixPath(relative)
    if (not relative or "\\" in relative or "\x00" in relative or posix.is_absolute()
            or any(part in ("", ".", "..") for part in relative.split("/"))
            or posix.parts[0] not in PROJECT_SUBDIRS or len(posix.parts) < 2):
        raise Rejected(f"{relative!r} is not a path inside the project's folders")
    return project_dir.joinpath(*posix.parts)


def check_file(relative: str, data: bytes) -> None:
    """Rejected when the bytes are not what the name says (or too many)."""
    if len(data) > MAX_RETURNED_FILE_BYTES:
        raise Rejected(f"{relative}: {len(data)} bytes, more than a job writes")
    suffix = PurePosixPath(relative).suffix.lower()
    if suffix == ".safetensors":
        _check_safetensors(relative, data)
    elif suffix == ".png" and not data.startswith(PNG_SIGNATURE):
        raise Rejected(f"{relative}: not a PNG file")
    elif suffix == ".json":
        try:
            json.loads(data)
        except ValueError:
            raise Rejected(f"{relative}: not a JSON file") from None


def _check_safetensors(relative: str, data: bytes) -> None:
    """The header is a length, then that much JSON naming tensors whose byte ranges lie inside the file."""
    if len(data) < 8:
        raise Rejected(f"{relative}: too short for a .safetensors file")
    (length,) = struct.unpack("<Q", data[:8])
    if length > min(MAX_SAFETENSORS_HEADER_BYTES, len(data) - 8):
        raise Rejected(f"{relative}: its .safetensors header is longer than the file")
    try:
        header = json.loads(data[8:8 + length])
    except ValueError:
        raise Rejected(f"{relative}: its .safetensors header is not JSON") from None
    body = len(data) - 8 - length
    for name, tensor in header.items() if isinstance(header, dict) else [("", None)]:
        if name == "__metadata__":
            continue
        offsets = tensor.get("data_offsets") if isinstance(tensor, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1] <= body):
            raise Rejected(f"{relative}: tensor {name!r} in its .safetensors header lies outside the file")


def apply_changes(project_dir: Path, changes: Changes) -> list[str]:
    """Writes what a node sent into the project (each file checked, then written atomically) and removes
    what it removed; returns why each rejected part was left out (the rest is applied)."""
    problems = []
    for relative, data in changes.files:
        try:
            path = project_path(project_dir, relative)
            check_file(relative, data)
        except Rejected as rejected:
            problems.append(str(rejected))
            continue
        atomic_write_bytes(path, data)
    for relative in changes.removed:
        try:
            path = project_path(project_dir, relative)
        except Rejected as rejected:
            problems.append(str(rejected))
            continue
        if path.is_file() and not path.is_symlink():
            path.unlink()
    return problems
