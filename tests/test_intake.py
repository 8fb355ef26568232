"""engine.intake: every file of an upload is validated, normalised, de-duplicated and stored, or turned
away with a reason that says what to do. Each hostile input is sent between two good pictures into a
project that already holds one: the good ones must be kept, the stored one left byte-for-byte alone, and
nothing may land outside dataset/ (checked over the whole temporary tree after every test)."""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from engine.config import IntakeConfig
from engine.intake import Accepted, IncomingFile, IntakeReport, Rejected, add_images
from engine.intake.decode import open_picture
from engine.intake.normalise import normalise
from engine.intake.phash import _dct_matrix, distance, phash
from engine.intake.report import Refused
from engine.intake.sniff import declared_size, sniff
from storage import images, projects, users
from storage.db import Database
from storage.layout import DataLayout, ProjectDirs
from tests.hostile_images import (
    animated,
    encode,
    gif_with_oversized_frame,
    jpeg_with_orientation,
    make_zip,
    mpo,
    patch_zip_entry,
    photo,
    png_bomb,
    png_chunk_types,
    png_rgb16,
    renamed_srgb_profile,
)

LIMITS = IntakeConfig(min_side=32, max_side=256, max_pixels=4_000_000, max_zip_entries=20, max_zip_mb=4,
                      max_zip_ratio=100, near_duplicate_distance=6)
USER = 1001
STORED_NAME = re.compile(r"^\d{4}_[a-z0-9_]+\.png$")
DB_FILES = {"lorabake.db", "lorabake.db-wal", "lorabake.db-shm"}
DAMAGED = "the file is damaged or cut off: upload it again"


@dataclass
class Project:
    root: Path
    db: Database
    dirs: ProjectDirs
    id: int

    async def add(self, files: list[IncomingFile], limits: IntakeConfig = LIMITS, kind: str = "train",
                  progress: Callable[[int, int], None] | None = None, project_id: int | None = None) -> IntakeReport:
        return await add_images(self.db, self.dirs, self.id if project_id is None else project_id, USER, kind,
                                files, limits, progress)

    def stored(self, kind: str = "train") -> dict[str, bytes]:
        folder = self.dirs.dataset if kind == "train" else self.dirs.reg
        return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}

    def image(self, filename: str) -> Image.Image:
        with Image.open(self.dirs.dataset / filename) as image:
            return image.copy()

    async def rows(self, kind: str = "train") -> list[images.ImageRow]:
        return await images.list_for_project(self.db, self.id, kind)


async def _new_project(db: Database, layout: DataLayout, name: str) -> tuple[int, ProjectDirs]:
    async with db.transaction() as tx:
        await users.upsert_user(tx, USER, "alice")
        row = await projects.insert_project(tx, USER, name, name.lower(), name.lower(), "man")
    return row.id, layout.create_project_dirs(USER, name.lower())


@pytest.fixture
async def project(tmp_path: Path):
    layout = DataLayout(tmp_path / "data")
    db = await Database.open(layout.db_path)
    project_id, dirs = await _new_project(db, layout, "Xing")
    opened = Project(tmp_path, db, dirs, project_id)
    yield opened
    await _check_consistent(opened)
    await db.close()
    _check_tree(tmp_path)


async def _check_consistent(project: Project) -> None:
    """Every stored file has its row and every row its file; each file is a clean 8-bit RGB PNG."""
    for kind, folder in (("train", project.dirs.dataset), ("reg", project.dirs.reg)):
        rows = await project.rows(kind)
        pictures = {path.name for path in folder.glob("*.png")}
        assert pictures == {row.filename for row in rows}
        for row in rows:
            data = (folder / row.filename).read_bytes()
            assert set(png_chunk_types(data)) == {b"IHDR", b"IDAT", b"IEND"}, "metadata must be stripped"
            with Image.open(io.BytesIO(data)) as image:
                assert image.mode == "RGB" and image.size == (row.width, row.height)
                assert max(image.size) <= 2048


def _check_tree(root: Path) -> None:
    """Nothing intake wrote may be anywhere but dataset/ or reg/, under a safe name, with no temp files."""
    for path in root.rglob("*"):
        if path.is_dir():
            continue
        relative = path.relative_to(root)
        if relative.parent == Path("data") and path.name in DB_FILES:
            continue
        assert relative.parent.name in ("dataset", "reg") and relative.parts[:2] == ("data", "users"), relative
        assert STORED_NAME.match(path.name) or path.suffix == ".txt", relative


def _file(name: str, data: bytes) -> IncomingFile:
    return IncomingFile(name, data)


def _png(seed: int, size: tuple[int, int] = (160, 120)) -> bytes:
    return encode(photo(seed, size))


def _only(report: IntakeReport, name: str) -> Accepted | Rejected:
    found = [item for item in [*report.accepted, *report.rejected] if item.name == name]
    assert len(found) == 1, (name, report)
    return found[0]


def _rejected(report: IntakeReport, name: str) -> str:
    outcome = _only(report, name)
    assert isinstance(outcome, Rejected), outcome
    return outcome.reason


def _accepted(report: IntakeReport, name: str) -> Accepted:
    outcome = _only(report, name)
    assert isinstance(outcome, Accepted), outcome
    return outcome


def _pixel(image: Image.Image, xy: tuple[int, int]) -> np.ndarray:
    return np.asarray(image.getpixel(xy), dtype=int)


# --- hostile single files, each sent between two good ones ------------------------------------------


def _pdf() -> bytes:
    return b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def _corrupt_idat() -> bytes:
    data = bytearray(_png(7))
    start = data.find(b"IDAT") + 40
    data[start:start + 32] = bytes(32)
    return bytes(data)


def _frames(colours: list[tuple[int, int, int]]) -> list[Image.Image]:
    """One colour per frame, with a black corner: a flat picture would be refused as nothing to learn."""
    frames = [Image.new("RGB", (64, 48), colour) for colour in colours]
    for frame in frames:
        frame.paste((0, 0, 0), (0, 0, 8, 8))
    return frames


def _palette_with_transparency() -> bytes:
    image = photo(11, (64, 64)).quantize(15)   # palette entries 0–14, plus 15: the transparent one
    image.putpalette(image.getpalette() + [0, 0, 0])
    image.paste(15, (0, 0, 16, 16))
    return encode(image, "PNG", transparency=15)


def _la() -> bytes:
    alpha = Image.new("L", (64, 64), 255)
    alpha.paste(0, (0, 0, 16, 16))
    return encode(Image.merge("LA", (photo(12, (64, 64)).convert("L"), alpha)))


def _rgba(alpha_value: int) -> bytes:
    rgb = np.asarray(photo(13, (64, 64))).copy()
    rgb[:16, :16] = (255, 0, 0)
    alpha = np.full(rgb.shape[:2], 255, dtype=np.uint8)
    alpha[:16, :16] = alpha_value
    return encode(Image.fromarray(np.dstack([rgb, alpha])))


def _grey16() -> bytes:
    values = np.full((64, 64), 65535, dtype=np.uint16)
    values[:, 32:] = 32768
    values[40:, :] = np.arange(64, dtype=np.uint16) * 1000   # some texture below the two test areas
    return encode(Image.fromarray(values))


def _rgb16() -> bytes:
    values = np.zeros((64, 64, 3), dtype=np.uint16)
    values[:, :32] = 65535
    values[:, 32:] = 32768
    values[40:, :, 0] = (np.arange(64) * 1000)[None, :]
    return png_rgb16(values)


def _one_bit() -> bytes:
    checker = (np.indices((64, 64)).sum(axis=0) // 8) % 2 == 0
    return encode(Image.fromarray(checker))


def _marked(size: tuple[int, int]) -> Image.Image:
    """A photo with a pure red square in its top-left corner, to see where rotation puts it."""
    pixels = np.asarray(photo(14, size)).copy()
    pixels[:size[1] // 4, :size[0] // 4] = (255, 0, 0)
    return Image.fromarray(pixels)


def _with_metadata() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "ACME camera"
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return encode(photo(15), "JPEG", quality=90, exif=exif.tobytes(), icc_profile=srgb)


def _red_is_at(corner: str) -> Callable[[Accepted, Image.Image], None]:
    def check(accepted: Accepted, image: Image.Image) -> None:
        width, height = image.size
        corners = {"top-left": (5, 5), "top-right": (width - 6, 5), "bottom-left": (5, height - 6),
                   "bottom-right": (width - 6, height - 6)}
        for name, xy in corners.items():
            red = _pixel(image, xy)[0] > 200 and _pixel(image, xy)[1] < 60
            assert red == (name == corner), (name, _pixel(image, xy))
    return check


def _expect_pixels(*expected: tuple[tuple[int, int], tuple[int, int, int]], tolerance: int = 2):
    def check(accepted: Accepted, image: Image.Image) -> None:
        for xy, colour in expected:
            assert np.abs(_pixel(image, xy) - colour).max() <= tolerance, (xy, _pixel(image, xy), colour)
    return check


@dataclass(frozen=True)
class Case:
    name: str
    data: Callable[[], bytes]
    reason: tuple[str, ...] = ()                 # a rejection whose reason contains all of these
    size: tuple[int, int] | None = None          # or an acceptance at this size…
    notes: tuple[str, ...] = ()                  # …with exactly these notes…
    check: Callable[[Accepted, Image.Image], None] | None = None   # …and these pixels
    limits: IntakeConfig = LIMITS


CASES = [
    # Not pictures, or pictures in formats intake does not read.
    Case("notes.png", lambda: b"my character is called Xing\n" * 10, ("not a picture (it is text)",
                                                                       "upload PNG, JPEG or WebP")),
    Case("scan.jpg", _pdf, ("not a picture (it is a PDF)", "upload PNG, JPEG or WebP")),
    Case("noise.webp", lambda: bytes(np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8)),
         ("not a picture (it is unknown data)", "upload PNG, JPEG or WebP")),
    Case("IMG_0001.jpg", lambda: b"\x00\x00\x00\x18ftypheic" + bytes(200),
         ("it is an iPhone HEIC, a picture format this bot cannot read", "save it as PNG or JPEG")),
    Case("drawing.png", lambda: encode(photo(4), "BMP"), ("it is a BMP, a picture format", "save it as PNG or JPEG")),
    Case("scan.tiff", lambda: encode(photo(4), "TIFF"), ("it is a TIFF, a picture format", "save it as PNG or JPEG")),
    Case("logo.png", lambda: b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>',
         ("it is an SVG drawing, a picture format this bot cannot read", "save it as PNG or JPEG")),
    Case("empty.png", lambda: b"", ("the file is empty", "upload the picture again")),
    # Damaged files.
    Case("cut.png", lambda: _png(5)[:2000], (DAMAGED,)),
    Case("cut.jpg", lambda: encode(photo(5), "JPEG", quality=90)[:1500], (DAMAGED,)),
    Case("cut.gif", lambda: animated(_frames([(255, 0, 0), (0, 255, 0)]), "GIF")[:100], (DAMAGED,)),
    Case("header-only.png", lambda: _png(6)[:33], (DAMAGED,)),
    Case("bad-crc.png", _corrupt_idat, (DAMAGED,)),
    Case("jpeg-no-frame.jpg", lambda: b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(100), (DAMAGED,)),
    # Sizes: bombs, giants, tiny, thin, heavy.
    Case("bomb.png", lambda: png_bomb(20000, 20000), ("too many pixels: 20000×20000", "scale it down")),
    Case("screen-trick.gif", lambda: gif_with_oversized_frame((64, 64), (3000, 2000)),
         ("too many pixels: 3000×2000",)),
    Case("giant.jpg", lambda: encode(Image.new("RGB", (2500, 2000), "gray"), "JPEG"),
         ("too many pixels: 2500×2000 is 5 megapixels, the limit is 4 megapixels", "scale it down")),
    Case("tiny.png", lambda: _png(8, (20, 100)), ("too small: 20×100, at least 32 px on the shorter side",
                                                  "upload a bigger version")),
    Case("banner.png", lambda: _png(8, (2000, 40)), ("too long and thin", "crop it")),
    Case("heavy.png", lambda: encode(Image.fromarray(np.random.default_rng(9).integers(
        0, 256, (256, 256, 3), dtype=np.uint8))), ("too big: 0.2 MB, the limit is 0.1 MB per picture",
                                                   "save it smaller"),
         limits=dataclasses.replace(LIMITS, max_file_mb=0.1)),
    # Accepted, unchanged or normalised.
    Case("really-a-jpeg.png", lambda: encode(photo(20), "JPEG", quality=90), size=(160, 120)),
    Case("../../escape.png", lambda: _png(21), size=(160, 120)),
    Case("animated.gif", lambda: animated(_frames([(250, 0, 0), (0, 250, 0), (0, 0, 250)]), "GIF"), size=(64, 48),
         notes=("first frame of an animated GIF (3 frames)",), check=_expect_pixels(((30, 20), (250, 0, 0)))),
    Case("animated.webp", lambda: animated(_frames([(0, 0, 250), (250, 0, 0)]), "WEBP"), size=(64, 48),
         notes=("first frame of an animated WebP (2 frames)",),
         check=_expect_pixels(((30, 20), (0, 0, 250)), tolerance=12)),
    Case("animated.png", lambda: animated(_frames([(0, 250, 0), (250, 0, 0)]), "PNG"), size=(64, 48),
         notes=("first frame of an animated PNG (2 frames)",), check=_expect_pixels(((30, 20), (0, 250, 0)))),
    Case("portrait-mode.jpg", lambda: mpo([_marked((160, 120)), photo(26)]), size=(160, 120),
         check=_red_is_at("top-left")),
    Case("print.jpg", lambda: encode(photo(22).convert("CMYK"), "JPEG", quality=95), size=(160, 120),
         notes=("converted from CMYK",)),
    Case("grey16.png", _grey16, size=(64, 64), notes=("converted from 16-bit",),
         check=_expect_pixels(((10, 10), (255, 255, 255)), ((50, 10), (128, 128, 128)), tolerance=0)),
    Case("rgb16.png", _rgb16, size=(64, 64), notes=("converted from 16-bit",),
         check=_expect_pixels(((10, 10), (255, 255, 255)), ((50, 10), (128, 128, 128)), tolerance=0)),
    Case("palette.png", _palette_with_transparency, size=(64, 64),
         notes=("transparent background flattened on white",), check=_expect_pixels(((5, 5), (255, 255, 255)),
                                                                                     tolerance=0)),
    Case("la.png", _la, size=(64, 64), notes=("transparent background flattened on white",),
         check=_expect_pixels(((5, 5), (255, 255, 255)), tolerance=0)),
    Case("half-clear.png", lambda: _rgba(128), size=(64, 64), notes=("transparent background flattened on white",),
         check=_expect_pixels(((5, 5), (255, 127, 127)), tolerance=1)),
    Case("opaque-alpha.png", lambda: _rgba(255), size=(64, 64), check=_expect_pixels(((5, 5), (255, 0, 0)))),
    Case("one-bit.png", _one_bit, size=(64, 64),
         check=_expect_pixels(((2, 2), (255, 255, 255)), ((10, 2), (0, 0, 0)), tolerance=0)),
    Case("grey.jpg", lambda: encode(photo(23).convert("L"), "JPEG", quality=95), size=(160, 120)),
    Case("sideways.jpg", lambda: jpeg_with_orientation(_marked((160, 120)), 6), size=(120, 160),
         notes=("rotated upright (EXIF)",), check=_red_is_at("top-right")),
    Case("upside-down.jpg", lambda: jpeg_with_orientation(_marked((160, 120)), 3), size=(160, 120),
         notes=("rotated upright (EXIF)",), check=_red_is_at("bottom-right")),
    Case("mirrored.jpg", lambda: jpeg_with_orientation(_marked((160, 120)), 2), size=(160, 120),
         notes=("mirrored and turned upright (EXIF)",), check=_red_is_at("top-right")),
    Case("wide.png", lambda: _png(24, (600, 400)), size=(256, 171), notes=("scaled down from 600×400 to 256×171",)),
    Case("big.jpg", lambda: encode(_marked((1200, 900)), "JPEG", quality=95), size=(256, 192),
         notes=("scaled down from 1200×900 to 256×192",), check=_red_is_at("top-left")),
    Case("big-sideways.jpg", lambda: jpeg_with_orientation(_marked((1200, 900)), 6), size=(192, 256),
         notes=("rotated upright (EXIF)", "scaled down from 900×1200 to 192×256"), check=_red_is_at("top-right")),
    Case("camera.jpg", _with_metadata, size=(160, 120)),
    Case("wide-gamut.png", lambda: encode(photo(25), "PNG", icc_profile=renamed_srgb_profile()), size=(160, 120),
         notes=("colours converted to sRGB (from Test built-in)",)),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_hostile_file_between_good_ones(project: Project, case: Case) -> None:
    await project.add([_file("stored.png", _png(100))])
    before, rows_before = project.stored(), await project.rows()

    report = await project.add([_file("first.png", _png(101)), _file(case.name, case.data()),
                                _file("last.jpg", encode(photo(102), "JPEG", quality=92))], case.limits)

    kept = [_accepted(report, "first.png"), _accepted(report, "last.jpg")]
    after = project.stored()
    assert {name: after[name] for name in before} == before, "a stored picture changed"
    assert (await project.rows())[:len(rows_before)] == rows_before
    if case.reason:
        reason = _rejected(report, case.name)
        for part in case.reason:
            assert part in reason
        assert report.summary() == "accepted 2, rejected 1"
    else:
        accepted = _accepted(report, case.name)
        assert (accepted.width, accepted.height) == case.size
        assert accepted.notes == case.notes
        assert project.image(accepted.filename).size == case.size
        if case.check:
            case.check(accepted, project.image(accepted.filename))
        kept.append(accepted)
    assert set(after) == set(before) | {item.filename for item in kept}


def test_enough_hostile_cases() -> None:
    assert len(CASES) >= 25


# --- format detection, damaged-file fuzzing and pHash --------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
def test_mangled_files_are_refused_never_crash(fmt: str) -> None:
    """Cut and bit-flipped copies of a good file: each is either read or refused with a reason, and
    nothing else escapes (an escaping exception would be reported to the member as our bug)."""
    original = encode(photo(31, (96, 64)), fmt)
    rng = np.random.default_rng(len(fmt))
    for attempt in range(40):
        data = bytearray(original[:rng.integers(8, len(original))] if attempt % 2 else original)
        for _ in range(rng.integers(1, 6)):
            data[rng.integers(0, len(data))] = rng.integers(0, 256)
        try:
            normalise(open_picture(bytes(data), LIMITS), LIMITS)
        except Refused as refused:
            assert refused.reason.endswith("upload it again") or "PNG" in refused.reason, refused.reason


@pytest.mark.parametrize("fmt, options", [
    ("PNG", {}), ("JPEG", {}), ("JPEG", {"progressive": True}), ("GIF", {}), ("WEBP", {"quality": 80}),
    ("WEBP", {"lossless": True}), ("WEBP", {"icc_profile": renamed_srgb_profile()}),
])
def test_declared_size_matches_pillow(fmt: str, options: dict) -> None:
    data = encode(photo(30, (97, 61)), fmt, **options)
    assert sniff(data).format == fmt
    assert declared_size(fmt, data) == (97, 61)


def test_dct_matrix_is_orthonormal_and_phash_separates_pictures() -> None:
    matrix = _dct_matrix(32)
    assert np.allclose(matrix @ matrix.T, np.eye(32))
    original = photo(40, (320, 240))
    copy = Image.open(io.BytesIO(encode(original.resize((288, 216)), "JPEG", quality=60)))
    assert len(phash(original)) == 16 and int(phash(original), 16) >= 0
    assert distance(phash(original), phash(copy)) <= 4
    others = [distance(phash(original), phash(photo(seed, (320, 240)))) for seed in range(41, 51)]
    assert min(others) > 12, others


# --- zips -------------------------------------------------------------------------------------------


async def test_zip_entries_good_bad_and_junk(project: Project) -> None:
    await project.add([_file("stored.png", _png(100))])
    before = project.stored()
    inner_zip = make_zip({"x.png": _png(60)})
    encrypted = patch_zip_entry(make_zip({"secret.png": _png(61), "ok.png": _png(62)}), "secret.png", flag_bits=1)
    archive = make_zip({
        "set/": b"", "set/inner/": b"", "set/inner/a.png": _png(63), "set/b.jpg": encode(photo(64), "JPEG"),
        "__MACOSX/set/._a.png": b"\x00\x05\x16\x07junk", "set/.DS_Store": b"\x00\x00\x00\x01Bud1",
        "Thumbs.db": b"\xd0\xcf\x11\xe0", "set/._b.jpg": b"junk",
        "../evil.png": _png(65), "/etc/abs.png": _png(66), "C:\\Windows\\drive.png": _png(67),
        "..\\..\\backslash.png": _png(68), "set/../../../deep.png": _png(69),
        "inner.zip": inner_zip, "disguised.png": inner_zip, "readme.txt": b"hello\n",
    })
    report = await project.add([_file("set.zip", archive), _file("enc.zip", encrypted)])

    assert _accepted(report, "set.zip/set/inner/a.png").filename.endswith("_a.png")
    assert _accepted(report, "set.zip/set/b.jpg").filename.endswith("_b.png")
    assert _accepted(report, "enc.zip/ok.png")
    for name in ("../evil.png", "/etc/abs.png", "C:/Windows/drive.png", "../../backslash.png", "set/../../../deep.png"):
        reason = _rejected(report, f"set.zip/{name}")
        assert "points outside the zip's folder" in reason and "zip the pictures again" in reason
    nested = "zips inside zips are not unpacked: upload the inner zip itself"
    assert _rejected(report, "set.zip/inner.zip") == _rejected(report, "set.zip/disguised.png") == nested
    assert "not a picture (it is text)" in _rejected(report, "set.zip/readme.txt")
    assert "password-protected: zip the pictures again without a password" in _rejected(report, "enc.zip/secret.png")
    assert report.summary() == "accepted 3, rejected 9"   # folders and macOS/Windows junk are not reported
    assert {name: project.stored()[name] for name in before} == before


async def test_zip_bomb_by_ratio_rejects_that_entry(project: Project) -> None:
    archive = make_zip({"bomb.png": bytes(2 * 1024 * 1024), "fine.png": _png(70)})
    report = await project.add([_file("bomb.zip", archive), _file("next.png", _png(71))])
    reason = _rejected(report, "bomb.zip/bomb.png")
    assert "which is how zip bombs work" in reason and "zip real pictures only" in reason
    assert _accepted(report, "bomb.zip/fine.png") and _accepted(report, "next.png")


@pytest.mark.parametrize("entries, reason", [
    ({f"p{i}.png": b"x" for i in range(21)}, "the zip holds 21 files, more than the 20 this server unpacks at once"),
    ({f"big{i}.png": bytes(2 * 1024 * 1024) for i in range(3)}, "the zip unpacks to 6 MB, more than the 4 MB"),
])
async def test_zip_over_entry_or_size_limit_is_rejected_whole(project: Project, entries: dict, reason: str) -> None:
    report = await project.add([_file("many.zip", make_zip(entries)), _file("next.png", _png(72))])
    assert reason in _rejected(report, "many.zip") and "split it into smaller zips" in _rejected(report, "many.zip")
    assert _accepted(report, "next.png")
    assert report.summary() == "accepted 1, rejected 1"


async def test_zip_headers_that_lie_about_sizes(project: Project) -> None:
    payload = encode(photo(73, (300, 300)), "BMP")   # compressible, so deflate has work to do
    smaller = patch_zip_entry(make_zip({"shrunk.png": payload, "good.png": _png(74)}), "shrunk.png", file_size=1000)
    bigger = patch_zip_entry(make_zip({"grown.png": _png(75)}), "grown.png", file_size=0x7FFFFFF0)
    report = await project.add([_file("smaller.zip", smaller), _file("bigger.zip", bigger)])
    # Inflating stops at the declared size; the checksum then shows the entry is not what it claims.
    assert _rejected(report, "smaller.zip/shrunk.png") == "the zip is damaged or cut off: upload it again"
    assert _accepted(report, "smaller.zip/good.png")
    assert "the zip unpacks to 2048 MB, more than the 4 MB" in _rejected(report, "bigger.zip")


@pytest.mark.parametrize("data", [
    make_zip({"a.png": _png(77), "b.png": _png(78)})[:3000],
    b"PK\x03\x04" + bytes(100),
    b"this was never a zip",
], ids=["truncated", "header-only", "garbage"])
async def test_corrupt_zip(project: Project, data: bytes) -> None:
    report = await project.add([_file("photos.zip", data), _file("next.png", _png(76))])
    assert _rejected(report, "photos.zip") == "the zip is damaged or cut off: upload it again"
    assert _accepted(report, "next.png")


async def test_zip_with_only_folders_and_junk(project: Project) -> None:
    report = await project.add([_file("empty.zip", make_zip({"a/": b"", "__MACOSX/._x": b"j", ".DS_Store": b"j"}))])
    assert "there are no pictures in the zip" in _rejected(report, "empty.zip")


# --- duplicates -----------------------------------------------------------------------------------


async def test_exact_duplicates_in_one_upload_and_of_stored_pictures(project: Project) -> None:
    first = await project.add([_file("a.png", _png(80))])
    stored = first.accepted[0].filename
    before = project.stored()
    as_webp = encode(Image.open(io.BytesIO(_png(80))), "WEBP", lossless=True)   # same pixels, other format
    report = await project.add([_file("b.png", _png(81)), _file("again.png", _png(80)), _file("b-copy.png", _png(81)),
                                _file("a.webp", as_webp)])
    assert _rejected(report, "again.png") == f"already in the project as {stored}: no need to upload it again"
    assert _rejected(report, "a.webp") == f"already in the project as {stored}: no need to upload it again"
    b = _accepted(report, "b.png")
    assert _rejected(report, "b-copy.png") == f"already in the project as {b.filename}: no need to upload it again"
    assert {name: project.stored()[name] for name in before} == before
    assert len(await project.rows()) == 2


async def test_near_duplicates(project: Project) -> None:
    original = photo(82, (320, 240))
    await project.add([_file("original.jpg", encode(original, "JPEG", quality=95))])
    stored = (await project.rows())[0].filename
    recompressed = encode(original.resize((290, 218), Image.Resampling.BICUBIC), "JPEG", quality=60)
    brighter = encode(Image.fromarray(np.clip(np.asarray(original, int) + 12, 0, 255).astype(np.uint8)), "PNG")
    report = await project.add([_file("copy.jpg", recompressed), _file("brighter.png", brighter),
                                _file("different.jpg", encode(photo(83, (320, 240)), "JPEG"))])
    for name in ("copy.jpg", "brighter.png"):
        reason = _rejected(report, name)
        assert reason.startswith(f"looks the same as {stored} already in the project") and "leave it out" in reason
    assert _accepted(report, "different.jpg")
    strict = dataclasses.replace(LIMITS, near_duplicate_distance=0)
    assert _accepted(await project.add([_file("copy.jpg", recompressed)], strict), "copy.jpg")


async def test_duplicates_are_checked_per_kind(project: Project) -> None:
    await project.add([_file("a.png", _png(84))], kind="train")
    report = await project.add([_file("a.png", _png(84))], kind="reg")
    assert _accepted(report, "a.png").filename in project.stored("reg")


# --- quotas -----------------------------------------------------------------------------------------


async def test_project_quota(project: Project) -> None:
    limits = dataclasses.replace(LIMITS, max_images_per_project=3)
    await project.add([_file("one.png", _png(90))], limits)
    report = await project.add([_file(f"p{i}.png", _png(91 + i)) for i in range(4)], limits)
    assert [item.name for item in report.accepted] == ["p0.png", "p1.png"]
    for name in ("p2.png", "p3.png"):
        reason = _rejected(report, name)
        assert "the project already has 3 training pictures, the most this server allows (3)" in reason
        assert "remove some before adding more" in reason


async def test_user_quota_counts_all_projects(project: Project) -> None:
    limits = dataclasses.replace(LIMITS, max_images_per_user=4)
    await project.add([_file(f"a{i}.png", _png(95 + i)) for i in range(3)], limits)
    other_id, other_dirs = await _new_project(project.db, DataLayout(project.root / "data"), "Other")
    report = await add_images(project.db, other_dirs, other_id, USER, "train",
                              [_file(f"b{i}.png", _png(110 + i)) for i in range(3)], limits)
    assert [item.name for item in report.accepted] == ["b0.png"]
    assert "you already have 4 pictures across your projects, the most this server allows (4)" in \
        _rejected(report, "b1.png")
    assert "delete pictures or projects you no longer need" in _rejected(report, "b2.png")


# --- storing, naming, progress, failures ----------------------------------------------------------------


async def test_empty_upload(project: Project) -> None:
    calls: list[tuple[int, int]] = []
    report = await project.add([], progress=lambda done, total: calls.append((done, total)))
    assert report == IntakeReport([], []) and report.summary() == "accepted 0, rejected 0" and calls == []


async def test_progress_and_file_names(project: Project) -> None:
    (project.dirs.dataset / "0041_left_behind.txt").write_text("an old caption with no picture")
    calls: list[tuple[int, int]] = []
    files = [_file("IMG_0001.JPG", encode(photo(120), "JPEG")), _file("../../Ünïcode Pic (1).png", _png(121)),
             _file("...", _png(122)), _file("bad.png", b"nope"),
             _file("set.zip", make_zip({"in/x.png": _png(123), "in/y.webp": encode(photo(124), "WEBP")}))]
    report = await project.add(files, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 6) for i in range(1, 7)]
    assert [item.filename for item in report.accepted] == [
        "0042_img_0001.png", "0043_unicode_pic_1.png", "0044_image.png", "0045_x.png", "0046_y.png"]
    rows = await project.rows()
    assert [row.source for row in rows] == ["IMG_0001.JPG", "../../Ünïcode Pic (1).png", "...", "set.zip/in/x.png",
                                            "set.zip/in/y.webp"]
    assert all(len(row.phash) == 16 and len(row.sha256) == 64 for row in rows)
    assert len({row.phash for row in rows}) == 5


async def test_a_file_name_cannot_forge_report_lines(project: Project) -> None:
    """Names are shown back to the member: a newline could start a fake "added …" line, a direction
    override (U+202E) could make "gnp.exe" read as "exe.png". Both are shown escaped."""
    forged = "a.png\nadded 0099_fake.png as 0099_fake.png"
    reversed_ = "photo\u202egnp.exe"
    report = await project.add([_file(forged, _png(130)), _file(reversed_, b"not a picture")])
    [accepted], [rejected] = report.accepted, report.rejected
    assert accepted.name == "a.png\\u000aadded 0099_fake.png as 0099_fake.png"
    assert rejected.name == "photo\\u202egnp.exe"
    assert [row.source for row in await project.rows()] == [forged]   # what was sent is kept as sent


async def test_flat_pictures_and_an_upload_past_its_decoding_budget_are_refused(project: Project) -> None:
    """A small file may declare a huge picture; one upload decodes at most max_upload_megapixels, in the
    member's order, and the files past it are refused (with a reason). A picture of one flat colour
    has nothing to learn from."""
    flat = _file("blank.png", encode(Image.new("RGB", (300, 300), (40, 90, 200)), "PNG"))
    big = [_file(f"big{i}.png", _png(140 + i, (1200, 900))) for i in range(4)]   # 1.08 megapixels each
    limits = dataclasses.replace(LIMITS, max_upload_megapixels=3)
    report = await project.add([flat, *big], limits)
    assert [item.name for item in report.accepted] == ["big0.png", "big1.png"]
    reasons = {item.name: item.reason for item in report.rejected}
    assert reasons["blank.png"].startswith("it is one flat colour, with nothing in it to learn from")
    assert reasons["big2.png"] == reasons["big3.png"] == (
        "this upload's pictures already add up to 3 megapixels, the most one upload may decode: send this and "
        "the files after it in another upload")
    again = await project.add([big[2], big[3]], limits)   # a new upload, a new budget
    assert [item.name for item in again.accepted] == ["big2.png", "big3.png"]


async def test_sha256_is_of_the_stored_file(project: Project) -> None:
    await project.add([_file("a.jpg", encode(photo(125), "JPEG"))])
    row = (await project.rows())[0]
    assert row.sha256 == hashlib.sha256((project.dirs.dataset / row.filename).read_bytes()).hexdigest()


async def test_a_failing_insert_leaves_no_file(project: Project) -> None:
    await project.add([_file("stored.png", _png(126))])
    before = project.stored()
    report = await project.add([_file("a.png", _png(127)), _file("b.png", _png(128))], project_id=9999)
    assert [item.reason for item in report.rejected] == [
        "it could not be saved on the server: upload it again in a while"] * 2
    assert project.stored() == before


async def test_event_loop_stays_responsive(project: Project) -> None:
    """Decoding, resizing, hashing and encoding run in a worker thread: a ticker on the loop keeps ticking."""
    files = [_file(f"big{i}.jpg", encode(photo(130 + i, (1900, 1400)), "JPEG", quality=92)) for i in range(4)]
    limits = dataclasses.replace(LIMITS, max_side=2048)
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    started = time.perf_counter()
    report = await add_images(project.db, project.dirs, project.id, USER, "reg", files, limits)
    elapsed = time.perf_counter() - started
    ticking.cancel()
    assert len(report.accepted) == 4
    assert max(gaps) < 0.15, (max(gaps), elapsed)


async def test_concurrent_uploads_to_one_project_do_not_race(project: Project) -> None:
    same = [_file("a.png", _png(140)), _file("b.png", _png(141))]
    first, second = await asyncio.gather(project.add(same), project.add(list(reversed(same))))
    assert len(first.accepted) + len(second.accepted) == 2
    assert len(first.rejected) + len(second.rejected) == 2
    assert all(reason.startswith("already in the project as") for reason in
               [item.reason for item in first.rejected + second.rejected])


async def test_cancelled_upload_keeps_what_it_stored(project: Project) -> None:
    files = [_file(f"p{i}.jpg", encode(photo(150 + i, (1200, 900)), "JPEG")) for i in range(8)]
    limits = dataclasses.replace(LIMITS, max_side=1024)
    first_stored = asyncio.Event()
    upload = asyncio.create_task(project.add(files, limits, progress=lambda done, total: first_stored.set()))
    await first_stored.wait()
    upload.cancel()
    with pytest.raises(asyncio.CancelledError):
        await upload
    stored = await project.rows()
    assert 1 <= len(stored) < len(files)
    # The folder is free again and consistent (the fixture checks rows against files): a retry completes it.
    report = await project.add(files, limits)
    assert len(report.accepted) == len(files) - len(stored)
