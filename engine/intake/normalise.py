"""One decoded frame → the picture we train on: upright, 8-bit sRGB without alpha, longest side capped,
saved as a metadata-free PNG (lossless, so re-saving never degrades it further)."""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, ImageOps

from engine.config import IntakeConfig
from engine.intake.decode import Opened, target_size
from engine.intake.phash import phash
from engine.intake.report import Refused

_WHITE = (255, 255, 255)
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# zlib level 1 writes 2048-px PNGs several times faster than the default 6, for files ~10 % larger.
_PNG_COMPRESS_LEVEL = 1
_SRGB = ImageCms.createProfile("sRGB")
# A picture whose every channel stays within this many levels is one flat colour (JPEG noise allowed).
FLAT_RANGE = 2


@dataclass(frozen=True)
class Prepared:
    png: bytes
    width: int
    height: int
    notes: tuple[str, ...]
    sha256: str        # of the PNG bytes, which are a pure function of the pixels (no metadata)
    phash: str
    decoded_pixels: int   # the picture's size in its file: what decoding it cost, counted per upload


def normalise(opened: Opened, limits: IntakeConfig) -> Prepared:
    notes = list(opened.notes)
    image = _upright(opened, notes)
    image = _to_rgb(image, notes)
    full = opened.full_size if opened.orientation < 5 else opened.full_size[::-1]   # 5–8 swap the sides
    target = target_size(full, limits.max_side)
    if target != full:
        notes.append(f"scaled down from {full[0]}×{full[1]} to {target[0]}×{target[1]}")
    if image.size != target:   # also when a JPEG was decoded at reduced scale
        image = image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    if all(high - low <= FLAT_RANGE for low, high in image.getextrema()):
        raise Refused("it is one flat colour, with nothing in it to learn from: upload pictures of the character")
    image.info.clear()         # no EXIF, ICC, text chunks or timestamps in what we store
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=_PNG_COMPRESS_LEVEL)
    png = buffer.getvalue()
    return Prepared(png, image.width, image.height, tuple(notes), hashlib.sha256(png).hexdigest(), phash(image),
                    full[0] * full[1])


def _upright(opened: Opened, notes: list[str]) -> Image.Image:
    if opened.orientation == 1:
        return opened.image
    if opened.orientation in (3, 6, 8):
        notes.append("rotated upright (EXIF)")
    else:
        notes.append("mirrored and turned upright (EXIF)")
    return ImageOps.exif_transpose(opened.image)


def _to_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    profile = _embedded_profile(image)
    if image.mode == "CMYK":
        notes.append("converted from CMYK")
        converted = _to_srgb(image, profile) if _space(profile) == "CMYK" else None
        return converted or image.convert("RGB")
    if image.mode in _HIGH_DEPTH_MODES:
        image = _to_8bit(image)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        image = _flatten(image, notes)
    rgb = image.convert("RGB")
    if _space(profile) == "RGB":
        description = (profile.profile.profile_description or "").strip()
        # Wide-gamut photos (Display P3, Adobe RGB) look washed out when their profile is dropped.
        converted = None if "srgb" in description.lower() else _to_srgb(rgb, profile)
        if converted is not None:
            notes.append(f"colours converted to sRGB (from {description or 'its colour profile'})")
            return converted
    return rgb


def _embedded_profile(image: Image.Image) -> ImageCms.ImageCmsProfile | None:
    """The ICC profile the file carries, or None (also for a broken one: colours stay as they are)."""
    icc = image.info.get("icc_profile")
    if not icc:
        return None
    try:
        return ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except (ImageCms.PyCMSError, OSError, TypeError, ValueError):
        return None


def _space(profile: ImageCms.ImageCmsProfile | None) -> str | None:
    return profile.profile.xcolor_space.strip() if profile is not None else None


def _to_srgb(image: Image.Image, profile: ImageCms.ImageCmsProfile) -> Image.Image | None:
    try:
        return ImageCms.profileToProfile(image, profile, _SRGB, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return None


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit values are divided by 257 (65535 → 255, 32768 → 128), not clipped at 255, which would make
    almost every pixel white. Values outside 0–65535 (32-bit and float modes) are stretched instead."""
    values = np.asarray(image)
    if values.dtype.kind in "ui" and values.min() >= 0 and values.max() <= 65535:
        scaled = (values.astype(np.uint32) + 128) // 257
    else:
        low, high = float(values.min()), float(values.max())
        scaled = np.rint((values.astype(np.float64) - low) * (255.0 / ((high - low) or 1.0)))
    return Image.fromarray(scaled.astype(np.uint8))


def _flatten(image: Image.Image, notes: list[str]) -> Image.Image:
    rgba = image.convert("RGBA")
    alpha = rgba.getchannel("A")
    if alpha.getextrema()[0] == 255:   # an alpha channel that is opaque everywhere changes nothing
        return rgba.convert("RGB")
    notes.append("transparent background flattened on white")
    background = Image.new("RGB", rgba.size, _WHITE)
    background.paste(rgba, mask=alpha)
    return background
