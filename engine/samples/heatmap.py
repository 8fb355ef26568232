"""The score table as a picture: fidelity and leak per epoch × weight, two small colour tables side by
side (rows = epochs, columns = weights), the recommended cell outlined in both, the cells whose leak is
over the threshold hatched in both (they cannot be recommended), each cell's value written in it.

Drawn with Pillow only, so the job needs no plotting library. HeatmapLayout is where every cell lies,
so a test can find a cell without re-deriving the drawing arithmetic."""
from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from engine.samples.grid import fit_text
from engine.samples.scores import CellScore

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
GRID_LINE = (205, 205, 205)
OUTLINE = (20, 70, 220)       # the recommended cell
HATCH = (70, 70, 70)          # leak over the threshold
FIDELITY_COLOURS = ((245, 245, 245), (34, 150, 70))   # 0 → 1: more of the character is better
LEAK_COLOURS = ((245, 245, 245), (205, 45, 45))       # 0 → saturated: more leak is worse
PADDING = 10
GAP = 24                      # between the two tables
OUTLINE_WIDTH = 3
HATCH_SPACING = 6
TABLES = ("fidelity", "leak")
CAPTIONS = ("Fidelity: the character shown", "Leak: other prompts bent")


@dataclass(frozen=True)
class HeatmapLayout:
    epochs: tuple[int, ...]
    weights: tuple[float, ...]
    cell: tuple[int, int]                                  # one cell's width, height
    origins: tuple[tuple[int, int], tuple[int, int]]       # top-left of each table's first cell
    lefts: tuple[int, int]                                 # each table's left edge (its caption, its labels)
    size: tuple[int, int]

    def cell_box(self, table: str, epoch: int, weight: float) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of a cell, right and bottom exclusive."""
        x, y = self.origins[TABLES.index(table)]
        column, row = self.weights.index(weight), self.epochs.index(epoch)
        width, height = self.cell
        return x + column * width, y + row * height, x + (column + 1) * width, y + (row + 1) * height


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _weight_label(weight: float) -> str:
    return "0 (base)" if weight == 0 else f"{weight:g}"


def heatmap_layout(scores: Sequence[CellScore], *, cell: tuple[int, int] = (64, 30)) -> HeatmapLayout:
    if not scores:
        raise ValueError("no scores to draw")
    epochs = tuple(sorted({s.epoch for s in scores}))
    weights = tuple(sorted({float(s.weight) for s in scores}))
    font = _font(cell[1] // 2)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = int(max(probe.textlength(f"epoch {e}", font=font) for e in epochs)) + PADDING
    cell = (max(cell[0], int(max(probe.textlength(_weight_label(w), font=font) for w in weights)) + 6), cell[1])
    title_height = cell[1] + PADDING            # the picture's title
    caption_height = cell[1]                    # each table's name
    header_height = cell[1]                     # the weights
    # A table is as wide as its cells or its caption, whichever is wider; the cells sit at its right.
    cells_width = len(weights) * cell[0]
    table_width = max(label_width + cells_width, int(max(probe.textlength(c, font=font) for c in CAPTIONS)) + 4)
    top = PADDING + title_height + caption_height + header_height
    origins = ((PADDING + table_width - cells_width, top), (PADDING + 2 * table_width + GAP - cells_width, top))
    legend_height = 2 * cell[1] + PADDING
    legend_width = int(max(probe.textlength(line, font=font) for line in _legend(100, 0.88, 1.0)))
    size = (2 * PADDING + max(2 * table_width + GAP, legend_width),
            top + len(epochs) * cell[1] + legend_height + PADDING)
    lefts = (PADDING, PADDING + table_width + GAP)
    return HeatmapLayout(epochs, weights, cell, origins, lefts, size)


def _legend(epoch: int, weight: float, max_leak: float) -> tuple[str, str]:
    return (f"Outlined: the recommended epoch {epoch} at weight {weight:g}",
            f"Hatched: leak over {max_leak:.0%}, not recommended")


def _mix(colours: tuple[tuple[int, int, int], tuple[int, int, int]], t: float) -> tuple[int, int, int]:
    t = min(1.0, max(0.0, t))
    low, high = colours
    return tuple(round(a + (b - a) * t) for a, b in zip(low, high, strict=True))  # type: ignore[return-value]


def _text_colour(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    return INK if 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2] > 140 else BACKGROUND


def _hatch(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int]) -> None:
    """45° lines across the box, clipped to it."""
    x0, y0, x1, y1 = box
    width, height = x1 - x0, y1 - y0
    for k in range(0, width + height - 1, HATCH_SPACING):
        first, last = max(0, k - (height - 1)), min(k, width - 1)   # dx range where dx + dy = k inside
        draw.line([(x0 + first, y0 + k - first), (x0 + last, y0 + k - last)], fill=HATCH, width=1)


def draw_heatmap(scores: Sequence[CellScore], *, recommended: tuple[int, float], max_leak: float,
                 title: str = "") -> Image.Image:
    """Fidelity on the left (0–100 %, greener is more of the character), leak on the right (redder is
    more change to prompts without the trigger; full red at twice `max_leak`, since the useful range
    of leak is near the threshold, not up to 100 %)."""
    layout = heatmap_layout(scores)
    by_cell = {(s.epoch, float(s.weight)): s for s in scores}
    width, height = layout.cell
    font, title_font = _font(height // 2), _font(height * 2 // 3)
    canvas = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((PADDING, PADDING), fit_text(draw, title or "Fidelity and leak per epoch and weight", title_font,
                                           layout.size[0] - 2 * PADDING), fill=INK, font=title_font)
    leak_full = max(2 * max_leak, 1e-6)
    for index, (table, caption) in enumerate(zip(TABLES, CAPTIONS, strict=True)):
        x, y = layout.origins[index]
        draw.text((layout.lefts[index], y - 2 * height + height // 2), caption, fill=INK, font=font, anchor="lm")
        for column, weight in enumerate(layout.weights):
            draw.text((x + column * width + width // 2, y - height // 2), _weight_label(weight), fill=INK,
                      font=font, anchor="mm")
        for row, epoch in enumerate(layout.epochs):
            draw.text((x - PADDING // 2, y + row * height + height // 2), f"epoch {epoch}", fill=INK, font=font,
                      anchor="rm")
        for epoch in layout.epochs:
            for weight in layout.weights:
                box = layout.cell_box(table, epoch, weight)
                score = by_cell.get((epoch, weight))
                if score is None:  # an epoch × weight the run did not render: left blank
                    draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=GRID_LINE)
                    continue
                value = score.fidelity if table == "fidelity" else score.leak
                fill = _mix(FIDELITY_COLOURS, value) if table == "fidelity" else _mix(LEAK_COLOURS, value / leak_full)
                draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=fill, outline=GRID_LINE)
                if score.leak > max_leak:
                    _hatch(draw, box)
                draw.text(((box[0] + box[2]) // 2, (box[1] + box[3]) // 2), f"{value:.0%}", font=font,
                          fill=_text_colour(fill), anchor="mm", stroke_width=2, stroke_fill=fill)
        if recommended in by_cell:
            box = layout.cell_box(table, *recommended)
            draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=OUTLINE, width=OUTLINE_WIDTH)
    legend_y = layout.origins[0][1] + len(layout.epochs) * height + height // 2
    epoch, weight = recommended
    for line, text in enumerate(_legend(epoch, weight, max_leak)):
        draw.text((PADDING, legend_y + line * (font.size + 4)), text, fill=INK, font=font)
    return canvas


def heatmap_png(scores: Sequence[CellScore], *, recommended: tuple[int, float], max_leak: float,
                title: str = "") -> bytes:
    out = io.BytesIO()
    draw_heatmap(scores, recommended=recommended, max_leak=max_leak, title=title).save(out, "PNG", optimize=True)
    return out.getvalue()
