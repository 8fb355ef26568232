"""Probabilities → caption.

Order of the tags in a caption: the trigger word, then the rating (only when include_ratings: the
most likely one, first, as kohya's --use_rating_tags puts it), then character tags, then general tags.
Character tags first is kohya's --character_tags_first: a character's name is the most telling tag.
Within each group tags go by descending confidence (ties: selected_tags.csv order) rather than kohya's
CSV order (which is Danbooru popularity), so the tags the member most needs to judge come first in the
curation view, and a caption truncated by the text encoder's 75 tokens loses the least certain tags.
"""
from __future__ import annotations

import numpy as np

from engine.tagging.model import TagTable
from engine.tagging.options import TagOptions

RATING, GENERAL, CHARACTER = 9, 0, 4


def underscore_rule(tag: str) -> str:
    """kohya's --remove_underscore: tags of 3 characters or fewer are emoticons (^_^, >_<, o_o)
    whose underscores are part of the face, so they keep them."""
    return tag.replace("_", " ") if len(tag) > 3 else tag


def _key(tag: str) -> str:
    """How tags are compared (blacklist, trigger, duplicates): as written in a caption, any case."""
    return underscore_rule(tag.strip()).lower()


class Captioner:
    """Precomputes, once per model and options, what every image's caption needs."""

    def __init__(self, table: TagTable, options: TagOptions) -> None:
        self._names = [underscore_rule(name) for name in table.names]
        blacklist = {_key(tag) for tag in options.blacklist}
        self._allowed = np.array([_key(name) not in blacklist for name in self._names], dtype=bool)
        self._ratings = np.flatnonzero(table.categories == RATING) if options.include_ratings else None
        # A threshold above 1 disables its category by itself: probabilities never exceed 1. Compared
        # in the model's float32, so a confidence shown as 0.35 passes a 0.35 threshold.
        self._thresholds = np.full(len(table), np.inf, dtype=np.float32)
        self._thresholds[table.categories == CHARACTER] = options.character_threshold
        self._thresholds[table.categories == GENERAL] = options.general_threshold
        self._thresholds[~self._allowed] = np.inf
        self._is_character = table.categories == CHARACTER

    def tags(self, probabilities: np.ndarray, trigger: str | None = None) -> list[str]:
        picked = np.flatnonzero(probabilities >= self._thresholds)
        by_confidence = picked[np.argsort(-probabilities[picked], kind="stable")]
        characters = by_confidence[self._is_character[by_confidence]]
        general = by_confidence[~self._is_character[by_confidence]]
        ordered = [self._names[i] for i in (*self._top_rating(probabilities), *characters, *general)]
        trigger = (trigger or "").strip()
        result = [trigger] if trigger else []
        seen = {_key(tag) for tag in result}
        for tag in ordered:
            if _key(tag) not in seen:
                seen.add(_key(tag))
                result.append(tag)
        return result

    def caption(self, probabilities: np.ndarray, trigger: str | None = None) -> str:
        return ", ".join(self.tags(probabilities, trigger))

    def _top_rating(self, probabilities: np.ndarray) -> list[int]:
        if self._ratings is None or not len(self._ratings):
            return []
        best = int(self._ratings[np.argmax(probabilities[self._ratings])])
        return [best] if self._allowed[best] else []
