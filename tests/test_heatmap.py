"""The heat map of fidelity and leak: two tables side by side with a cell per epoch × weight, the
recommended cell outlined in both, cells over the leak threshold hatched, colours following the values.
Checked on pixels of a controlled input, using the layout the drawing itself uses."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine.samples.heatmap import HATCH, OUTLINE, OUTLINE_WIDTH, draw_heatmap, heatmap_layout, heatmap_png
from engine.samples.scores import CellScore

EPOCHS, WEIGHTS = (1, 2, 3), (0.0, 0.5, 1.0)
MAX_LEAK = 0.15
# Fidelity grows with epoch and weight; leak is over the threshold only at epoch 3, weight 1.
SCORES = [CellScore(e, w, fidelity=0.3 * e * w, leak=0.3 if (e, w) == (3, 1.0) else 0.05 * w)
          for e in EPOCHS for w in WEIGHTS]
BEST = (3, 0.5)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.asarray(draw_heatmap(SCORES, recommended=BEST, max_leak=MAX_LEAK, title="alice"))


def _edge(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The pixels just inside the cell's left edge, over the middle third of its height."""
    x0, y0, _x1, y1 = box
    third = (y1 - y0) // 3
    return image[y0 + third:y1 - third, x0 + 1]


def _corner(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """A patch in the cell's top-left corner, clear of the outline and of the centred value text."""
    x0, y0, _x1, _y1 = box
    return image[y0 + OUTLINE_WIDTH + 1:y0 + OUTLINE_WIDTH + 8, x0 + OUTLINE_WIDTH + 1:x0 + OUTLINE_WIDTH + 12]


def test_geometry_two_tables_side_by_side_one_cell_per_epoch_and_weight(image: np.ndarray) -> None:
    layout = heatmap_layout(SCORES)
    assert image.shape[1::-1] == layout.size
    assert layout.epochs == EPOCHS and layout.weights == WEIGHTS
    width, height = layout.cell
    for table in ("fidelity", "leak"):
        boxes = [layout.cell_box(table, e, w) for e in EPOCHS for w in WEIGHTS]
        assert all(x1 - x0 == width and y1 - y0 == height for x0, y0, x1, y1 in boxes)
        assert all(x0 >= 0 and x1 <= layout.size[0] and y0 >= 0 and y1 <= layout.size[1]
                   for x0, y0, x1, y1 in boxes)
        assert layout.cell_box(table, 1, 0.5)[0] == layout.cell_box(table, 1, 0.0)[2]  # columns touch
        assert layout.cell_box(table, 2, 0.0)[1] == layout.cell_box(table, 1, 0.0)[3]  # rows touch
    fidelity_right = layout.cell_box("fidelity", 1, 1.0)[2]
    assert layout.cell_box("leak", 1, 0.0)[0] > fidelity_right, "the leak table is to the right, not over it"
    assert layout.cell_box("leak", 1, 0.0)[1] == layout.cell_box("fidelity", 1, 0.0)[1]


def every_cell():
    """(table, epoch, weight, its box) for each cell of both tables."""
    layout = heatmap_layout(SCORES)
    for table in ("fidelity", "leak"):
        for epoch in EPOCHS:
            for weight in WEIGHTS:
                yield table, epoch, weight, layout.cell_box(table, epoch, weight)


def test_recommended_cell_is_outlined_in_both_tables_and_no_other(image: np.ndarray) -> None:
    for table, epoch, weight, box in every_cell():
        outlined = bool((_edge(image, box) == OUTLINE).all(axis=1).all())
        assert outlined == ((epoch, weight) == BEST), (table, epoch, weight)


def test_cells_over_the_leak_threshold_are_hatched_in_both_tables(image: np.ndarray) -> None:
    for table, epoch, weight, box in every_cell():
        hatched = bool((_corner(image, box) == HATCH).all(axis=-1).any())
        assert hatched == ((epoch, weight) == (3, 1.0)), (table, epoch, weight)


def test_colours_follow_the_values(image: np.ndarray) -> None:
    layout = heatmap_layout(SCORES)

    def colour(table: str, epoch: int, weight: float) -> np.ndarray:
        return _corner(image, layout.cell_box(table, epoch, weight))[0, 0].astype(int)

    low, high = colour("fidelity", 1, 0.0), colour("fidelity", 2, 1.0)   # fidelity 0 and 0.6
    assert high[1] - high[0] > low[1] - low[0], "more fidelity is greener"
    calm, leaky = colour("leak", 1, 0.0), colour("leak", 2, 1.0)         # leak 0 and 0.05
    assert leaky[0] - leaky[1] > calm[0] - calm[1], "more leak is redder"


def test_png_round_trip_and_refusals() -> None:
    data = heatmap_png(SCORES, recommended=BEST, max_leak=MAX_LEAK)
    assert Image.open(io.BytesIO(data)).size == heatmap_layout(SCORES).size
    with pytest.raises(ValueError, match="no scores"):
        draw_heatmap([], recommended=BEST, max_leak=MAX_LEAK)
    # One epoch, two weights: the legend and title still fit on the picture.
    tiny = [CellScore(1, 0.0, 0.0, 0.0), CellScore(1, 1.0, 0.5, 0.01)]
    small = np.asarray(draw_heatmap(tiny, recommended=(1, 1.0), max_leak=MAX_LEAK, title="alice"))
    assert small.shape[1::-1] == heatmap_layout(tiny).size
    assert (small[:, -4:] == 255).all(), "nothing is drawn up to the right edge (no text cut off)"
