"""From bytes to the first frame of a picture, with every check that can turn a file away done as early
as it can be: size in bytes, then format by content, then dimensions from the header, and only then
the (expensive, attack-prone) decoding."""
from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image

from engine.config import IntakeConfig
from engine.intake.report import Refused
from engine.intake.sniff import PICTURE_FORMATS, PLEASE_UPLOAD, declared_size, sniff

DAMAGED = "the file is damaged or cut off: upload it again"
_ORIENTATION_TAG = 0x0112
_ANIMATION_NAMES = {"GIF": "an animated GIF", "WEBP": "an animated WebP", "PNG": "an animated PNG"}


@dataclass
class Opened:
    image: Image.Image          # the first frame, decoded; possibly decoded at reduced scale (JPEG draft)
    full_size: tuple[int, int]  # its size in the file, before any reduction or rotation
    orientation: int            # EXIF orientation, 1 when upright or absent
    notes: list[str]


def open_picture(data: bytes, limits: IntakeConfig) -> Opened:
    """Raises Refused with the member-facing reason when the file cannot be used."""
    check_byte_size(len(data), limits)
    sniffed = sniff(data)
    if sniffed.format not in PICTURE_FORMATS:
        if sniffed.picture:
            raise Refused(f"it is {sniffed.what}, a picture format this bot cannot read: save it as PNG or JPEG "
                          "and upload that")
        raise Refused(f"not a picture (it is {sniffed.what}): {PLEASE_UPLOAD}")
    size = declared_size(sniffed.format, data)
    if size is None:
        raise Refused(DAMAGED)
    _check_dimensions(size, limits)   # before Pillow sees the file: a bomb is never even opened
    with _pillow_errors(limits):
        image = Image.open(io.BytesIO(data), formats=[sniffed.format])
        frames = getattr(image, "n_frames", 1)
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    # Pillow's idea of the size wins when it differs (a GIF frame may be bigger than its screen).
    _check_dimensions(image.size, limits)
    notes = []
    # A JPEG with several frames is an MPO (phone portrait or 3-D shots): its first frame is the photo.
    if frames > 1 and sniffed.format in _ANIMATION_NAMES:
        notes.append(f"first frame of {_ANIMATION_NAMES[sniffed.format]} ({frames} frames)")
    if sniffed.format == "PNG" and data[24:25] == b"\x10":   # IHDR bit depth; the other formats hold 8 bits
        notes.append("converted from 16-bit")
    full_size = image.size
    target = target_size(full_size, limits.max_side)
    with _pillow_errors(limits):
        if target != full_size and sniffed.format == "JPEG":
            # Decoding a big JPEG at 1/2, 1/4 or 1/8 scale is several times faster; the final Lanczos
            # resize still sets the exact size.
            image.draft(None, target)
        image.load()
    upright = orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1
    return Opened(image, full_size, upright, notes)


@contextmanager
def _pillow_errors(limits: IntakeConfig) -> Iterator[None]:
    """Hostile or cut-off files make Pillow raise almost anything (OSError, SyntaxError, ValueError,
    struct.error, EOFError…); to the member they all mean the same thing. Wraps Pillow calls only, so
    that our own mistakes still surface as errors."""
    try:
        yield
    except Image.DecompressionBombError:
        raise Refused(_too_many_pixels_reason(None, limits)) from None
    except Exception:
        raise Refused(DAMAGED) from None


def check_byte_size(size: int, limits: IntakeConfig) -> None:
    if size == 0:
        raise Refused("the file is empty (0 bytes): upload the picture again")
    if size > limits.max_file_mb * 1024 * 1024:
        raise Refused(f"too big: {size / 1024 / 1024:.1f} MB, the limit is {limits.max_file_mb:g} MB per picture: "
                      "save it smaller (for example as a JPEG) and upload that")


def target_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """The size after capping the longest side at max_side, keeping the aspect ratio."""
    width, height = size
    longest = max(width, height)
    if longest <= max_side:
        return size
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def _check_dimensions(size: tuple[int, int], limits: IntakeConfig) -> None:
    width, height = size
    if width * height > limits.max_pixels:
        raise Refused(_too_many_pixels_reason(size, limits))
    if min(width, height) < limits.min_side:
        raise Refused(f"too small: {width}×{height}, at least {limits.min_side} px on the shorter side: "
                      "upload a bigger version of it")
    scaled = target_size(size, limits.max_side)
    if min(scaled) < limits.min_side:
        raise Refused(f"too long and thin: {width}×{height} would become {scaled[0]}×{scaled[1]} once the "
                      f"longest side is cut to {limits.max_side} px, under {limits.min_side} px on the shorter "
                      "side: crop it closer to a square")


def _too_many_pixels_reason(size: tuple[int, int] | None, limits: IntakeConfig) -> str:
    limit = f"the limit is {limits.max_pixels / 1e6:g} megapixels"
    if size is None:
        return f"too many pixels ({limit}): scale it down and upload it again"
    width, height = size
    return (f"too many pixels: {width}×{height} is {width * height / 1e6:.0f} megapixels, {limit}: "
            "scale it down and upload it again")
