"""The toy world: 64×64 pictures of one figure drawn with PIL from attributes, each with the Danbooru-style
tags that are true of it. Everything is a pure function of a seed, so the toy base model, the toy tagger
and the quality checks all see the same world.

A figure has hair (colour; long hair = 1girl, short = 1boy), eyes (colour), a build drawn as the body's
shape (plump = circle, muscular = square, slim = triangle), a shirt (colour and pattern), a background
colour and a place in the frame. Every picture is `solo`.

The base model's data follows PRIORS, in which the character's traits are rare, and never holds a figure
with CHARACTER's look: like a real base model, it can draw purple hair or a slim build when asked, but
has never seen XingBar, so the trigger word means nothing to it until a LoRA teaches it.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

SIZE = 64

HAIR = {"red": (220, 30, 30), "blue": (40, 70, 220), "black": (25, 25, 25), "white": (240, 240, 240),
        "purple": (140, 40, 200), "brown": (120, 70, 30), "green": (30, 160, 50), "pink": (255, 120, 190)}
EYES = {"blue": (30, 90, 255), "red": (230, 20, 20), "green": (20, 200, 60), "yellow": (255, 220, 0)}
BUILDS = ("plump", "muscular", "slim")  # circle, square, triangle
SHIRTS = {"red": (210, 40, 40), "orange": (255, 140, 0), "yellow": (240, 210, 30), "green": (40, 170, 70),
          "blue": (50, 90, 210), "purple": (150, 60, 200), "white": (245, 245, 245)}
PATTERNS = ("plain", "striped", "polka dot")
BACKGROUNDS = {"white": (255, 255, 255), "grey": (150, 150, 150), "blue": (150, 195, 255),
               "green": (160, 225, 160), "pink": (255, 195, 225), "yellow": (255, 240, 150)}
PLACES = {"left side": 18, "centered": 32, "right side": 46}
COUNTS = ("1boy", "1girl")  # drawn as short / long hair
SKIN = (255, 214, 170)

# How often each value appears in the base model's data. The character's traits (purple hair, yellow eyes,
# slim, striped) are the rare ones, so a base model asked for nothing in particular seldom draws them.
PRIORS: dict[str, dict[str, float]] = {
    "hair": {"red": 0.14, "blue": 0.14, "black": 0.14, "white": 0.12, "purple": 0.06, "brown": 0.14,
             "green": 0.13, "pink": 0.13},
    "eyes": {"blue": 0.32, "red": 0.30, "green": 0.30, "yellow": 0.08},
    "build": {"plump": 0.45, "muscular": 0.45, "slim": 0.10},
    "shirt": {name: 1 / len(SHIRTS) for name in SHIRTS},
    "pattern": {"plain": 0.7, "striped": 0.12, "polka dot": 0.18},
    "background": {name: 1 / len(BACKGROUNDS) for name in BACKGROUNDS},
    "place": {name: 1 / len(PLACES) for name in PLACES},
    "count": {"1boy": 0.5, "1girl": 0.5},
}
ATTRIBUTES = tuple(PRIORS)


@dataclass(frozen=True)
class Figure:
    hair: str
    eyes: str
    build: str
    shirt: str
    pattern: str
    background: str
    place: str
    count: str
    dx: int = 0   # small shifts, so no two pictures of one look are pixel-identical
    dy: int = 0

    def tags(self) -> list[str]:
        """The tags that are true of the picture, in a fixed order (count first, as WD14 lists them)."""
        tags = [self.count, "solo", f"{self.hair} hair", f"{self.eyes} eyes", self.build, f"{self.shirt} shirt"]
        if self.pattern != "plain":
            tags.append(f"{self.pattern} shirt")
        return [*tags, f"{self.background} background", self.place]

    def value(self, attribute: str) -> str:
        return str(getattr(self, attribute))


def attribute_tag(attribute: str, value: str) -> str | None:
    """The tag that says `attribute` is `value` (None: a plain shirt has no pattern tag)."""
    return {"hair": f"{value} hair", "eyes": f"{value} eyes", "shirt": f"{value} shirt",
            "pattern": None if value == "plain" else f"{value} shirt", "background": f"{value} background",
            }.get(attribute, value)


def all_tags() -> list[str]:
    """Every tag the world uses, in a fixed order (the toy tagger's output order)."""
    tags: list[str] = []
    for attribute in ATTRIBUTES:
        for value in PRIORS[attribute]:
            tag = attribute_tag(attribute, value)
            if tag is not None and tag not in tags:
                tags.append(tag)
    return ["solo", *tags]


@dataclass(frozen=True)
class Character:
    """A look the base model never saw: a trigger word stands for it once a LoRA is trained."""
    name: str
    hair: str
    eyes: str
    build: str
    pattern: str
    count: str

    def traits(self) -> list[str]:
        """The tags of the character's fixed look (what a member prunes so the trigger learns it)."""
        return [f"{self.hair} hair", f"{self.eyes} eyes", self.build, f"{self.pattern} shirt"]

    def wears(self, figure: Figure) -> bool:
        return (figure.hair, figure.eyes, figure.build, figure.pattern) == (self.hair, self.eyes, self.build,
                                                                           self.pattern)


CHARACTER = Character("XingBar", hair="purple", eyes="yellow", build="slim", pattern="striped", count="1boy")


def _pick(rng: random.Random, attribute: str) -> str:
    values = PRIORS[attribute]
    return rng.choices(list(values), weights=list(values.values()))[0]


def random_figure(rng: random.Random, **fixed: str) -> Figure:
    """A figure drawn from PRIORS, with `fixed` attributes as given. Hair and shirt never take the
    background's colour (they would vanish into it)."""
    background = fixed.get("background")
    if background and background in (fixed.get("hair"), fixed.get("shirt")):
        raise ValueError(f"a {background} background would hide {background} hair or a {background} shirt")
    while True:
        values = {attribute: fixed.get(attribute) or _pick(rng, attribute) for attribute in ATTRIBUTES}
        if values["background"] not in (values["hair"], values["shirt"]):
            return Figure(**values, dx=rng.randint(-2, 2), dy=rng.randint(-2, 2))


def base_figures(seed: int, count: int) -> list[Figure]:
    """The base model's data: `count` figures from PRIORS, none with CHARACTER's look (≥ 3 of its 4 traits)."""
    rng = random.Random(seed)
    figures: list[Figure] = []
    while len(figures) < count:
        figure = random_figure(rng)
        shared = sum(figure.value(a) == getattr(CHARACTER, a) for a in ("hair", "eyes", "build", "pattern"))
        if shared < 3:
            figures.append(figure)
    return figures


def character_figures(seed: int, count: int, character: Character = CHARACTER) -> list[Figure]:
    """`count` pictures of the character, in every background and place in turn, shirt colours varied:
    the pictures a member would upload."""
    rng = random.Random(seed)
    backgrounds, places, shirts = list(BACKGROUNDS), list(PLACES), [s for s in SHIRTS if s != "purple"]
    rng.shuffle(backgrounds)
    figures = []
    for n in range(count):
        background = backgrounds[n % len(backgrounds)]
        shirt = next(s for s in shirts[n % len(shirts):] + shirts if s != background)
        figures.append(random_figure(rng, hair=character.hair, eyes=character.eyes, build=character.build,
                                     pattern=character.pattern, count=character.count, shirt=shirt,
                                     background=background, place=list(places)[n % len(places)]))
    return figures


def _shade(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(c * factor) for c in colour)  # type: ignore[return-value]


def draw(figure: Figure, size: int = SIZE) -> Image.Image:
    """The figure as an RGB picture, drawn at 64 px and scaled up with nearest-neighbour to `size` (a
    multiple of 64): the big version shrinks back to exactly the small one."""
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUNDS[figure.background])
    pen = ImageDraw.Draw(image)
    x, y = PLACES[figure.place] + figure.dx, 24 + figure.dy   # head centre
    shirt = SHIRTS[figure.shirt]
    top, bottom, half = y + 10, y + 36, 11
    if figure.build == "plump":
        body = [(x - half - 1, top), (x + half + 1, bottom + 4)]
        pen.ellipse(body, fill=shirt)
    elif figure.build == "muscular":
        body = [(x - half, top), (x + half, bottom)]
        pen.rectangle(body, fill=shirt)
    else:
        pen.polygon([(x, top - 2), (x - half, bottom), (x + half, bottom)], fill=shirt)
    mask = Image.new("L", (SIZE, SIZE), 0)   # where the shirt is, for its pattern
    mask_pen = ImageDraw.Draw(mask)
    if figure.build == "slim":
        mask_pen.polygon([(x, top - 2), (x - half, bottom), (x + half, bottom)], fill=255)
    elif figure.build == "plump":
        mask_pen.ellipse([(x - half - 1, top), (x + half + 1, bottom + 4)], fill=255)
    else:
        mask_pen.rectangle([(x - half, top), (x + half, bottom)], fill=255)
    if figure.pattern != "plain":
        overlay = Image.new("RGB", (SIZE, SIZE), shirt)
        over_pen = ImageDraw.Draw(overlay)
        ink = _shade(shirt, 0.35) if figure.shirt != "white" else (60, 60, 60)
        # Bold enough to survive the VAE's ×4 downscaling: 3 px stripes and dots on a 6 px pitch.
        if figure.pattern == "striped":
            for row in range(top + 2, bottom + 5, 6):
                over_pen.rectangle([(x - half - 2, row), (x + half + 2, row + 2)], fill=ink)
        else:
            for n, row in enumerate(range(top + 3, bottom + 3, 6)):
                for col in range(x - half + 1 + n % 2 * 3, x + half, 6):
                    over_pen.rectangle([(col, row), (col + 2, row + 2)], fill=ink)
        image.paste(overlay, (0, 0), mask)
    hair = HAIR[figure.hair]
    # Long hair falls behind the head to the shoulders (not over the chest: the build stays visible).
    if figure.count == "1girl":
        pen.rectangle([(x - 11, y - 6), (x + 11, y + 13)], fill=hair)
    pen.ellipse([(x - 9, y - 9), (x + 9, y + 9)], fill=SKIN)
    pen.chord([(x - 10, y - 11), (x + 10, y + 7)], start=180, end=360, fill=hair)
    eye = EYES[figure.eyes]
    for ex in (x - 4, x + 4):
        pen.ellipse([(ex - 2, y + 1), (ex + 2, y + 5)], fill=eye)
    if size != SIZE:
        if size % SIZE:
            raise ValueError(f"toy pictures are drawn at multiples of {SIZE} px, not {size}")
        image = image.resize((size, size), Image.Resampling.NEAREST)
    return image


def caption(figure: Figure) -> str:
    return ", ".join(figure.tags())
