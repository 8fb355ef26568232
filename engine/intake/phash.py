"""64-bit perceptual hash (the DCT "pHash"): pictures that look alike get hashes a few bits apart, even
after re-encoding, resizing or small colour changes, so near-duplicate uploads can be caught."""
from __future__ import annotations

from functools import cache

import numpy as np
from PIL import Image

_SIDE = 32      # the picture is reduced to 32×32 grey before the DCT
_KEEP = 8       # an 8×8 block of the lowest frequencies gives the 64 bits


@cache
def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II: row k holds cos(pi/n * (i + 1/2) * k); D = C @ X @ C.T is the 2-D DCT."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    matrix = np.sqrt(2.0 / n) * np.cos(np.pi / n * (i + 0.5) * k)
    matrix[0] /= np.sqrt(2.0)
    return matrix


def phash(image: Image.Image) -> str:
    """16 hex digits. The block starts at (1, 1), as in the original pHash: the DC term (0, 0) is only
    the mean brightness and would give a bit that never changes."""
    grey = image.convert("L").resize((_SIDE, _SIDE), Image.Resampling.LANCZOS)
    pixels = np.asarray(grey, dtype=np.float64)
    matrix = _dct_matrix(_SIDE)
    coefficients = (matrix @ pixels @ matrix.T)[1:_KEEP + 1, 1:_KEEP + 1].ravel()
    bits = coefficients > np.median(coefficients)
    return f"{int(''.join('1' if bit else '0' for bit in bits), 2):016x}"


def distance(a: str, b: str) -> int:
    """Hamming distance between two hashes: how many of the 64 bits differ."""
    return (int(a, 16) ^ int(b, 16)).bit_count()
