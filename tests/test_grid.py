"""Sample grids: geometry, labels really drawn, cells where they belong, and the Discord size limit."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine.samples.grid import draw_grid, encode_for_discord, fit_cell

WEIGHTS = ["0", "0.4", "0.6", "0.8", "1.0"]


def cell_image(r: int, c: int, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(r * 10 + c)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def grid_cells(rows: int, cols: int) -> list[list[Image.Image]]:
    return [[cell_image(r, c) for c in range(cols)] for r in range(rows)]


def test_geometry_and_cell_placement() -> None:
    cells = grid_cells(3, 5)
    image = draw_grid(cells, row_labels=["epoch 1", "epoch 2", "epoch 3"], col_labels=WEIGHTS, title="XingBar30",
                      cell=64)
    label_width = 64 // 2 + 16
    assert image.width == label_width + 5 * 64
    top = image.height - 3 * 64
    # The cell at row 1, column 3 holds exactly cell_image(1, 3) (same size: pasted unscaled).
    box = (label_width + 3 * 64, top + 64, label_width + 4 * 64, top + 128)
    assert np.array_equal(np.asarray(image.crop(box)), np.asarray(cell_image(1, 3)))


def test_labels_and_title_are_drawn() -> None:
    cells = grid_cells(2, 5)
    blank = draw_grid(cells, row_labels=["", ""], col_labels=[""] * 5, title="", cell=64)
    labelled = draw_grid(cells, row_labels=["a photo of XingBar", "XingBar, castle"], col_labels=WEIGHTS,
                         title="XingBar30 — weights", cell=64)
    top = labelled.height - 2 * 64
    differs = np.asarray(blank) != np.asarray(labelled)
    assert differs[:top].any(), "title and column labels appear above the cells"
    assert differs[top:, :48].any(), "row labels appear left of the cells"
    assert not differs[top:, 48:].any(), "labels never draw over the cells"


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="does not match"):
        draw_grid(grid_cells(2, 4), row_labels=["a", "b"], col_labels=WEIGHTS, title="t")


def test_fits_discord_or_splits_into_parts() -> None:
    cells = grid_cells(6, 5)
    labels = [f"epoch {n}" for n in range(1, 7)]
    [whole] = encode_for_discord(cells, row_labels=labels, col_labels=WEIGHTS, title="t", max_bytes=10 * 2**20,
                                 cell=64)
    assert whole.format == "PNG" and whole.rows == range(6)
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(whole.data)).save(jpeg, "JPEG", quality=60)
    [compressed] = encode_for_discord(cells, row_labels=labels, col_labels=WEIGHTS, title="t",
                                      max_bytes=len(whole.data) - 1, cell=64)
    assert compressed.format == "JPEG" and compressed.rows == range(6), "JPEG before splitting"
    limit = jpeg.tell() // 2  # not even the most compressed whole grid fits
    parts = encode_for_discord(cells, row_labels=labels, col_labels=WEIGHTS, title="t", max_bytes=limit, cell=64)
    assert len(parts) > 1 and all(len(p.data) <= limit for p in parts)
    assert [r for p in parts for r in p.rows] == list(range(6)), "every row exactly once, in order"
    for part in parts:
        Image.open(io.BytesIO(part.data)).verify()


def test_small_samples_fill_the_cell_as_crisp_blocks() -> None:
    small = cell_image(1, 2, size=64)
    big = fit_cell(small, 256)
    assert big.size == (256, 256)
    # Nearest-neighbour ×4: each sample pixel is a 4×4 block of exactly its colour.
    assert np.array_equal(np.asarray(big)[::4, ::4], np.asarray(small))
    assert np.array_equal(np.asarray(big)[3::4, 3::4], np.asarray(small))
    assert fit_cell(cell_image(0, 0, size=512), 256).size == (256, 256)   # large ones shrink
    assert fit_cell(cell_image(0, 0, size=200), 256).size == (200, 200)   # under ×2: left as it is
    image = draw_grid([[small]], row_labels=["epoch 1"], col_labels=["1"], title="t", cell=256)
    assert image.width == 256 // 2 + 16 + 256
