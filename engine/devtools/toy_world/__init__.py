"""A toy world where learning is real and measurable on a CPU: 64 px figures drawn from attributes
(world.py), and a base model in SD1.5's layout and a WD14-style tagger trained on them (build.py), shipped
as package data in model/ so that tests, the demo and CI never train them.

`shipped()` gives the folders: `[models] sd15 = <sd15>` and `[tagger] model = <tagger>` make lorabake use
them like any real model. How they were built and how well they draw is in model/build.json and
model/README.md.
"""
from __future__ import annotations

from pathlib import Path

from engine.devtools.toy_world.build import ToyWorldPaths, paths_in
from engine.devtools.toy_world.world import CHARACTER, Character, character_figures, draw

SHIPPED = Path(__file__).parent / "model"
# The toy base model's schedule (zero terminal SNR) oversaturates at the usual guidance 7: it draws best
# at 3 (model/README.md), so its reg pictures and samples use 3.
GUIDANCE = 3.0
UPLOAD_SIZE = 256   # intake refuses pictures under 256 px; drawn at 64 px and scaled up ×4, nearest-neighbour


def shipped() -> ToyWorldPaths:
    return paths_in(SHIPPED)


def character_pictures(count: int, *, seed: int = 7, character: Character = CHARACTER) -> list[tuple[str, bytes]]:
    """(file name, PNG bytes) of `count` pictures of the character, as a member would upload them."""
    import io

    files = []
    for n, figure in enumerate(character_figures(seed, count, character), start=1):
        out = io.BytesIO()
        draw(figure, size=UPLOAD_SIZE).save(out, "PNG")
        files.append((f"{character.name.lower()}_{n:02d}.png", out.getvalue()))
    return files


def write_character_pictures(folder: Path, count: int) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in character_pictures(count):
        (folder / name).write_bytes(data)
        written.append(folder / name)
    return written


__all__ = ["CHARACTER", "GUIDANCE", "SHIPPED", "ToyWorldPaths", "character_pictures", "shipped",
           "write_character_pictures"]
