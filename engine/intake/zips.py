"""Zips members upload, unpacked in memory only (nothing is ever extracted to disk) and never trusted:
entry count, sizes and compression ratios are checked from the headers before anything is inflated,
and the sizes are enforced again while reading, because headers can lie."""
from __future__ import annotations

import io
import re
import threading
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import PurePosixPath

from engine.config import IntakeConfig
from engine.intake.decode import check_byte_size
from engine.intake.report import IncomingFile, Refused
from engine.intake.sniff import sniff

MB = 1024 * 1024
DAMAGED_ZIP = "the zip is damaged or cut off: upload it again"
NESTED = "zips inside zips are not unpacked: upload the inner zip itself"
# Below this size an entry cannot be a bomb, however well it packs (small blank pictures pack 100:1 and more).
_RATIO_FLOOR = 1 * MB
_JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class ZipEntry:
    name: str                 # for the member: "set.zip/inner/a.png"
    inner: str                # the path inside the zip, backslashes read as folder separators
    info: zipfile.ZipInfo
    refused: str | None       # set when the header alone already rules the entry out


def is_zip(upload: IncomingFile) -> bool:
    """By content; a file called .zip that is no picture is treated as a (probably damaged) zip too."""
    sniffed = sniff(upload.data)
    return sniffed.format == "ZIP" or (upload.name.lower().endswith(".zip") and sniffed.format is None)


class ZipUpload:
    """One zip, opened in memory. Raises Refused (for the whole zip) from the constructor."""

    def __init__(self, upload: IncomingFile, limits: IntakeConfig) -> None:
        self.name = upload.name
        self._limits = limits
        total_limit = int(limits.max_zip_mb * MB)
        if len(upload.data) > total_limit:
            raise Refused(f"the zip is {len(upload.data) / MB:.0f} MB, more than the {limits.max_zip_mb:g} MB this "
                          "server unpacks: split it into smaller zips")
        try:
            self._zip = zipfile.ZipFile(io.BytesIO(upload.data))
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, NotImplementedError):
            raise Refused(DAMAGED_ZIP) from None
        if len(infos) > limits.max_zip_entries:
            raise Refused(f"the zip holds {len(infos)} files, more than the {limits.max_zip_entries} this server "
                          "unpacks at once: split it into smaller zips")
        declared = sum(info.file_size for info in infos)
        if declared > total_limit:
            raise Refused(f"the zip unpacks to {declared / MB:.0f} MB, more than the {limits.max_zip_mb:g} MB this "
                          "server unpacks: split it into smaller zips")
        self._left = total_limit   # bytes that may still be inflated, whatever the headers claim
        self._reading = threading.Lock()   # entries are read from several worker threads
        self.entries = [self._entry(info) for info in infos if not _is_junk(info)]

    def read(self, entry: ZipEntry) -> bytes:
        """The entry's bytes, inflating at most what its header declares and what the zip's budget has
        left. Runs in a worker thread."""
        with self._reading:
            limit = min(entry.info.file_size, self._left)
            try:
                with self._zip.open(entry.info) as handle:
                    data = handle.read(limit + 1)
            except NotImplementedError:
                raise Refused("packed with a compression method this bot cannot unpack: zip the pictures again "
                              "with ordinary (Deflate) compression") from None
            except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, RuntimeError):
                raise Refused(DAMAGED_ZIP) from None
            self._left -= len(data)
        if len(data) > limit:
            raise Refused("unpacks to more than the zip's header says, which is how zip bombs work: zip the "
                          "pictures again with an ordinary zip tool")
        if sniff(data).format == "ZIP":
            raise Refused(NESTED)
        return data

    def _entry(self, info: zipfile.ZipInfo) -> ZipEntry:
        inner = info.filename.replace("\\", "/")
        return ZipEntry(f"{self.name}/{inner}", inner, info, self._header_problem(info, inner))

    def _header_problem(self, info: zipfile.ZipInfo, inner: str) -> str | None:
        if inner.startswith("/") or _DRIVE.match(inner) or ".." in PurePosixPath(inner).parts:
            return ("its path inside the zip points outside the zip's folder (../, a drive or an absolute path), "
                    "so it was not unpacked: zip the pictures again from their own folder")
        if info.flag_bits & 0x1:
            return "it is password-protected: zip the pictures again without a password"
        if inner.lower().endswith(".zip"):
            return NESTED
        try:
            check_byte_size(info.file_size, self._limits)
        except Refused as refused:
            return refused.reason
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size >= _RATIO_FLOOR and ratio > self._limits.max_zip_ratio:
            return (f"it is packed {ratio:.0f} times smaller than it unpacks (the limit is "
                    f"{self._limits.max_zip_ratio:g}), which is how zip bombs work: zip real pictures only")
        return None


def _is_junk(info: zipfile.ZipInfo) -> bool:
    """Folders and the files macOS and Windows add on their own: skipped without a word."""
    parts = PurePosixPath(info.filename.replace("\\", "/")).parts
    if info.is_dir() or info.filename.endswith(("/", "\\")) or not parts:
        return True
    base = parts[-1].lower()
    return "__MACOSX" in parts or base in _JUNK_NAMES or base.startswith("._")
