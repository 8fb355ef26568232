"""A project as a zip in kohya's folder convention (DESIGN §2 "Data on disk"), to train elsewhere:

    img/<repeats>_<trigger> <class>/      every training picture + its same-name .txt caption
    reg/<reg_repeats>_<class>/            the class (regularization) pictures + captions, when any
    README.txt                            what the folders mean for kohya sd-scripts / kohya_ss

Decisions:
- Every picture goes in, captioned or not: kohya captions a picture without a .txt with its folder's
  name ("XingBar man"), which trains it as the character, so dropping it would lose data for nothing.
  `uncaptioned` counts the training pictures without a caption so the member can be told.
- A picture that cannot be read fails the export (ExportError) rather than being left out silently.
  The zip is written to a temporary file beside `out` and renamed over it only when complete, so a
  failure never leaves a partial zip (nor touches an older export at `out`).
- Folder names come from the trigger and class, so characters that no file system takes in a folder
  name (/ \\ : * ? " < > | and control characters) are refused, and so are names of only dots:
  nothing in the zip can point outside the folder it is unpacked into. File names are the stored
  names (one path component each).
- Links in the project folders are refused, not followed.
"""
from __future__ import annotations

import os
import stat
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from engine import naming
from engine.errors import Invalid, UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")   # what kohya sd-scripts loads
CAPTION_SUFFIX = ".txt"
REPEATS_MIN, REPEATS_MAX = 1, 100
_FORBIDDEN = set('/\\:*?"<>|')
# Zip timestamps run from 1980 to 2107; a day inside each end keeps every time zone in range.
_ZIP_EARLIEST, _ZIP_LATEST = 315_619_200, 4_354_732_800


class ExportError(UserError):
    """The project's files could not be packed; the text says which and what to do."""


@dataclass(frozen=True)
class ExportSummary:
    path: Path          # the finished zip
    images: int         # training pictures in img/
    reg_images: int     # class pictures in reg/
    uncaptioned: int    # training pictures without a caption (kohya uses the folder name for them)
    size_bytes: int


def _folder_part(value: str, what: str, *, last: bool = False) -> str:
    bad = sorted({ch for ch in value if ch in _FORBIDDEN or ord(ch) < 32 or ord(ch) == 127})
    if bad:
        shown = " ".join(repr(ch) for ch in bad)
        raise Invalid(f"the {what} {value!r} contains {shown}, which cannot be part of a folder name: "
                      f"change the {what} before exporting")
    if set(value) <= {".", " "}:
        raise Invalid(f"the {what} {value!r} cannot be used in a folder name: change the {what} before exporting")
    if last and value.endswith("."):
        raise Invalid(f"the {what} {value!r} ends in a dot, which Windows drops from folder names: "
                      f"change the {what} before exporting")
    return value


def _repeats(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not REPEATS_MIN <= value <= REPEATS_MAX:
        raise Invalid(f"{what} must be a whole number from {REPEATS_MIN} to {REPEATS_MAX}, not {value!r} "
                      "(kohya-colab uses 10 for SD1.5 and 2 for SDXL)")
    return value


def _pictures(folder: Path) -> list[Path]:
    """The pictures in a project folder, by name; temp files of interrupted writes (".name.tmp")
    and everything that is not a picture are left out."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        found.append(path)
    return sorted(found, key=lambda p: p.name)


def _unreadable(source: Path, exc: OSError) -> ExportError:
    return ExportError(f"could not read {source} ({exc.strerror or exc}): the export was stopped and nothing "
                       "was written; remove or re-upload that picture and export again")


def _add(archive: zipfile.ZipFile, source: Path, arcname: str, *, compress: bool) -> None:
    try:
        info = os.lstat(source)
    except OSError as exc:
        raise _unreadable(source, exc) from None
    if stat.S_ISLNK(info.st_mode):
        raise ExportError(f"{source} is a link, not a picture file: remove it from the project folder "
                          "and export again")
    if not stat.S_ISREG(info.st_mode):
        raise ExportError(f"{source} is not a regular file: remove it from the project folder and export again")
    mtime = min(max(info.st_mtime, _ZIP_EARLIEST), _ZIP_LATEST)
    entry = zipfile.ZipInfo(arcname, date_time=time.localtime(mtime)[:6])
    entry.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    entry.external_attr = 0o644 << 16
    try:
        src = source.open("rb")
    except OSError as exc:
        raise _unreadable(source, exc) from None
    with src, archive.open(entry, "w") as dst:
        while True:
            try:
                chunk = src.read(1 << 20)
            except OSError as exc:
                raise _unreadable(source, exc) from None
            if not chunk:
                break
            dst.write(chunk)


def _readme(*, name: str, trigger: str, class_name: str, img_dir: str, reg_dir: str | None,
            repeats: int, reg_repeats: int, images: int, reg_images: int, uncaptioned: int) -> str:
    lines = [
        f"{name} — a lorabake project exported for kohya sd-scripts / kohya_ss",
        "",
        f"{img_dir}/",
        f"    {images} training pictures, each with a same-name .txt caption that starts with the trigger",
        f"    word \"{trigger}\". The folder name is kohya's <repeats>_<instance prompt> <class>:",
        f"    every picture is seen {repeats} time(s) per epoch, and a picture without a caption file is",
        f"    captioned \"{trigger} {class_name}\".",
    ]
    if uncaptioned:
        lines.append(f"    {uncaptioned} of them have no caption file and will use that folder caption.")
    if reg_dir:
        lines += [
            f"{reg_dir}/",
            f"    {reg_images} regularization (class) pictures of \"{class_name}\", repeated {reg_repeats} time(s).",
            "    kohya draws as many of them per epoch as there are training images × repeats, so an",
            "    epoch takes about twice as many steps as without them.",
        ]
    else:
        lines.append("(no reg/ folder: the project has no regularization pictures)")
    lines += [
        "",
        "kohya_ss (GUI): set the image folder to img and the regularisation folder to reg (if present),",
        "caption extension .txt, and keep the first token (keep_tokens 1) when shuffling captions.",
        "",
        "sd-scripts:",
        f"    train_network.py --train_data_dir img{' --reg_data_dir reg' if reg_dir else ''} \\",
        f"        --caption_extension .txt --shuffle_caption --keep_tokens 1 --output_name {name} ...",
        "",
        f"Prompt with \"{trigger}\" to call up the character.",
        "",
    ]
    return "\n".join(lines)


def export_project(project_dir: Path, *, name: str, trigger: str, class_name: str, repeats: int,
                   reg_repeats: int = 1, out: Path) -> ExportSummary:
    """Zip the project's dataset/ and reg/ in kohya's folder layout to `out` (atomically)."""
    project_dir, out = Path(project_dir), Path(out)
    name = naming.project_name(name)
    trigger = _folder_part(naming.trigger_word(trigger), "trigger word")
    class_name = _folder_part(naming.class_name(class_name), "class", last=True)
    repeats = _repeats(repeats, "repeats")
    reg_repeats = _repeats(reg_repeats, "reg repeats")

    train = _pictures(project_dir / "dataset")
    reg = _pictures(project_dir / "reg")
    if not train:
        raise Invalid("the project has no training pictures to export: add some first")
    img_dir = f"img/{repeats}_{trigger} {class_name}"
    reg_dir = f"reg/{reg_repeats}_{class_name}" if reg else None
    uncaptioned = sum(not picture.with_suffix(CAPTION_SUFFIX).is_file() for picture in train)

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    except OSError as exc:
        raise ExportError(f"could not create the export in {out.parent} ({exc.strerror or exc}): check that the "
                          "folder exists and can be written, and export again") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            with zipfile.ZipFile(handle, "w") as archive:
                written: set[str] = set()
                for folder, pictures in ((img_dir, train), (reg_dir, reg)):
                    if folder is None:
                        continue
                    for picture in pictures:
                        _add(archive, picture, f"{folder}/{picture.name}", compress=False)
                        caption = picture.with_suffix(CAPTION_SUFFIX)
                        # a.png and a.jpg share a.txt, as they do for kohya: pack it once.
                        arcname = f"{folder}/{caption.name}"
                        if arcname not in written and (caption.exists() or caption.is_symlink()):
                            _add(archive, caption, arcname, compress=True)
                            written.add(arcname)
                readme = _readme(name=name, trigger=trigger, class_name=class_name, img_dir=img_dir,
                                 reg_dir=reg_dir, repeats=repeats, reg_repeats=reg_repeats, images=len(train),
                                 reg_images=len(reg), uncaptioned=uncaptioned)
                archive.writestr("README.txt", readme, compress_type=zipfile.ZIP_DEFLATED)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):   # writing failed: disk full, folder not writable…
            raise ExportError(f"could not write the export to {out} ({exc.strerror or exc}): free some disk "
                              "space (or fix the folder's permissions) and export again") from None
        raise
    return ExportSummary(out, len(train), len(reg), uncaptioned, out.stat().st_size)
