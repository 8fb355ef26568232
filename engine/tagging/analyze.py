"""Tag frequencies over a set of captions: the "analyze tags" list the member prunes from."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class TagCount:
    tag: str
    count: int    # images whose caption has the tag
    share: float  # count / images


def split_caption(caption: str) -> list[str]:
    return [tag for tag in (part.strip() for part in caption.split(",")) if tag]


def analyze(captions: list[str], trigger: str | None) -> list[TagCount]:
    """Most frequent first, ties by tag; the trigger is left out (every caption has it by design).
    A tag written twice in one caption counts once: the share is of images, not of mentions."""
    counts = Counter(tag for caption in captions for tag in set(split_caption(caption)))
    counts.pop((trigger or "").strip(), None)
    total = len(captions)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [TagCount(tag, count, count / total) for tag, count in ranked]
