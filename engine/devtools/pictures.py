"""Generated pictures for the demo and the tests: each seed gives a different picture (far apart in
perceptual hash), so none is refused as a near-duplicate of another."""
from __future__ import annotations

import io
import zipfile

import numpy as np
from PIL import Image


def picture(seed: int, size: tuple[int, int] = (96, 80), fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    # Coarse blocks, not per-pixel noise: survives resizing, so its hash reflects the content.
    blocks = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(blocks).resize(size, Image.Resampling.NEAREST)
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def zip_of(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return out.getvalue()
