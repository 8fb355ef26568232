"""The X/Y plot members make by hand, drawn for them: a grid of sample images with a label per row
and per column and a title, encoded small enough for a Discord attachment (split into several
images, top to bottom, when one would be too big)."""
from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
PADDING = 8


@dataclass(frozen=True)
class GridImage:
    data: bytes
    format: str        # "PNG" or "JPEG"
    rows: range        # which rows of the grid this image holds
    size: tuple[int, int]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """The text, shortened with … until it fits `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def draw_grid(cells: Sequence[Sequence[Image.Image]], *, row_labels: Sequence[str], col_labels: Sequence[str],
              title: str, cell: int = 256) -> Image.Image:
    """One image: title on top, column labels under it, a label left of each row, cells resized to
    `cell`×`cell` (aspect kept, centred on white)."""
    rows, cols = len(cells), len(col_labels)
    if rows != len(row_labels) or any(len(row) != cols for row in cells):
        raise ValueError(f"grid shape {rows}×{[len(r) for r in cells]} does not match the labels "
                         f"{len(row_labels)}×{cols}")
    font = _font(max(12, cell // 14))
    title_font = _font(max(14, cell // 11))
    label_width = cell // 2 + PADDING * 2
    title_height = title_font.size + PADDING * 2
    header_height = font.size + PADDING * 2
    width = label_width + cols * cell
    height = title_height + header_height + rows * cell
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((PADDING, PADDING), fit_text(draw, title, title_font, width - 2 * PADDING), fill=INK, font=title_font)
    for c, label in enumerate(col_labels):
        x = label_width + c * cell
        draw.text((x + cell // 2, title_height + header_height // 2), fit_text(draw, label, font, cell - PADDING),
                  fill=INK, font=font, anchor="mm")
    for r, (label, row) in enumerate(zip(row_labels, cells, strict=True)):
        y = title_height + header_height + r * cell
        _wrap_label(draw, label, font, (PADDING, y + PADDING), label_width - 2 * PADDING, cell - 2 * PADDING)
        for c, image in enumerate(row):
            thumb = fit_cell(image.convert("RGB"), cell)
            canvas.paste(thumb, (label_width + c * cell + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
    return canvas


def fit_cell(image: Image.Image, cell: int) -> Image.Image:
    """The picture sized to fit a `cell`-px square: larger ones shrunk (Lanczos); small ones (a 64 px
    sample) enlarged by a whole factor with nearest-neighbour, so every pixel stays a crisp block."""
    factor = cell // max(image.size)
    if factor >= 2:
        return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    image = image.copy()
    image.thumbnail((cell, cell), Image.Resampling.LANCZOS)
    return image


def _wrap_label(draw: ImageDraw.ImageDraw, text: str, font, origin: tuple[int, int], width: int, height: int) -> None:
    """Row labels are often prompts: wrap them word by word into the label column."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(fit_text(draw, word, font, width))
    line_height = font.size + 2
    max_lines = max(1, height // line_height)
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [fit_text(draw, lines[max_lines - 1] + " …", font, width)]
    for index, line in enumerate(lines):
        draw.text((origin[0], origin[1] + index * line_height), line, fill=INK, font=font)


def encode_for_discord(cells: Sequence[Sequence[Image.Image]], *, row_labels: Sequence[str],
                       col_labels: Sequence[str], title: str, max_bytes: int, cell: int = 256) -> list[GridImage]:
    """The grid as few images as possible, each under `max_bytes`: PNG if it fits, else JPEG at falling
    quality, else the rows split into parts (each with its own title and column labels)."""
    return _encode_rows(cells, range(len(cells)), row_labels, col_labels, title, max_bytes, cell)


def _encode_rows(cells, rows: range, row_labels, col_labels, title, max_bytes, cell) -> list[GridImage]:
    part_title = title if len(rows) == len(cells) else f"{title} (rows {rows.start + 1}–{rows.stop})"
    image = draw_grid([cells[r] for r in rows], row_labels=[row_labels[r] for r in rows], col_labels=col_labels,
                      title=part_title, cell=cell)
    for fmt, quality in (("PNG", None), ("JPEG", 90), ("JPEG", 75), ("JPEG", 60)):
        out = io.BytesIO()
        image.save(out, fmt, **({"quality": quality} if quality else {"optimize": True}))
        if out.tell() <= max_bytes:
            return [GridImage(out.getvalue(), fmt, rows, image.size)]
    if len(rows) == 1:
        if cell > 64:  # a single row still too big: smaller cells
            return _encode_rows(cells, rows, row_labels, col_labels, title, max_bytes, cell // 2)
        raise ValueError(f"one grid row does not fit in {max_bytes} bytes even at {cell}px cells")
    middle = rows.start + len(rows) // 2
    return (_encode_rows(cells, range(rows.start, middle), row_labels, col_labels, title, max_bytes, cell)
            + _encode_rows(cells, range(middle, rows.stop), row_labels, col_labels, title, max_bytes, cell))
