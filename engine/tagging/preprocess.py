"""An image → the WD tagger's input, following kohya sd-scripts' `tag_images_by_wd14_tagger.py`:
flatten on white, pad to a centred square with white, resize to the model's side (OpenCV's exact area
average when shrinking, Lanczos when enlarging: engine.imaging), BGR, float32 in 0..255, no normalisation.

EXIF orientation is deliberately NOT applied: intake stores pictures already upright, and the tagger
must describe the very pixels the trainer will read (kohya reads them without exif_transpose too).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from engine.imaging import resize
from engine.tagging import TaggerError

WHITE = (255, 255, 255)


def load_rgb(source: str | Path | Image.Image) -> Image.Image:
    """An RGB image; anything with transparency (alpha band, or a palette/RGB/L transparency key)
    is composited on white, since a transparent background reads as "white background" to taggers."""
    if isinstance(source, Image.Image):
        return _flatten(source)
    try:
        with Image.open(source) as opened:
            opened.load()  # decode now, inside the try and before the file closes
            return _flatten(opened)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        name = Path(source).name
        raise TaggerError(f"could not read the picture {name} ({exc}): remove it from the project "
                          "and upload it again") from None


def _flatten(image: Image.Image) -> Image.Image:
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, WHITE)
        flat.paste(rgba, mask=rgba.getchannel("A"))  # out = rgb·a + white·(1 − a), rounded
        return flat
    return image if image.mode == "RGB" else image.convert("RGB")


def prepare(image: Image.Image, size: int) -> np.ndarray:
    """(size, size, 3) float32 BGR in 0..255; `size` is the model's input side (read from the model)."""
    image = load_rgb(image)
    width, height = image.size
    side = max(width, height)
    if width != height:
        square = Image.new("RGB", (side, side), WHITE)
        # kohya: pad_left = pad_x // 2, pad_top = pad_y // 2 (the odd pixel goes right / bottom).
        square.paste(image, ((side - width) // 2, (side - height) // 2))
        image = square
    # INTER_AREA when shrinking, Pillow's Lanczos when enlarging, as sd-scripts' resize_image.
    image = resize(image, size, size)
    out = np.empty((size, size, 3), dtype=np.float32)
    out[...] = np.asarray(image)[..., ::-1]  # RGB → BGR and uint8 → float32 in one pass
    return out
