"""Numbers for "is this LoRA good, and at which epoch and weight?".

- Fidelity (trigger prompts): the share of the character's tags — the traits the member pruned, and the
  dataset's frequent tags that the base model does not draw anyway — that the tagger finds in the sample.
  High = the character comes through.
- Leak (control prompts, no trigger): how far a sample moved from the same prompt and seed at weight 0, in
  pixels (style), and in the character's tags it gained (the LoRA drawing its character where nobody asked).
  High = the LoRA bends prompts that never asked for the character. Tags that merely changed do not count:
  any LoRA nudges the sampling path, and whatever the prompt leaves open (a hair colour, a background) then
  lands elsewhere at random — in the toy world that flipped a tag in most control samples of a LoRA whose
  control prompts gained no character trait at all, which 1 − Jaccard of the tag sets called 34 % leak.
The recommendation: the best fidelity among the cells whose leak stays under the threshold."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image


def fidelity(found: Iterable[str], character_tags: Iterable[str]) -> float:
    """Share of `character_tags` present in `found` (tag sets as the tagger writes them)."""
    wanted = {tag.lower() for tag in character_tags}
    if not wanted:
        return 0.0
    return len(wanted & {tag.lower() for tag in found}) / len(wanted)


def scored_tags(pruned: Sequence[str], frequent: Sequence[str], base_samples: Sequence[Iterable[str]],
                *, min_share: float = 0.5) -> list[str]:
    """The tags fidelity looks for: every pruned trait, and the dataset's frequent tags except those the
    base model draws anyway for the trigger prompts (found in at least `min_share` of the weight-0
    samples: `solo`, `1boy`…), which say nothing about the character coming through."""
    counts: dict[str, int] = {}
    for found in base_samples:
        for tag in {t.lower() for t in found}:
            counts[tag] = counts.get(tag, 0) + 1
    anyway = {tag for tag, n in counts.items() if base_samples and n / len(base_samples) >= min_share}
    keep = list(pruned)
    keep += [tag for tag in frequent if tag not in keep and tag.lower() not in anyway]
    return keep


def pixel_distance(image: Image.Image, base: Image.Image) -> float:
    """Mean absolute difference, 0 (identical) to 1 (black vs white everywhere)."""
    if image.size != base.size:
        raise ValueError(f"images of different sizes: {image.size} and {base.size}")
    a = np.asarray(image.convert("RGB"), dtype=np.float32)
    b = np.asarray(base.convert("RGB"), dtype=np.float32)
    return float(np.abs(a - b).mean() / 255.0)


def character_gain(tags: Iterable[str], base_tags: Iterable[str], character_tags: Iterable[str]) -> float:
    """Share of `character_tags` found in `tags` but not in `base_tags` (the same prompt and seed at weight 0):
    0 = none of the character came in, 1 = all of it did."""
    return fidelity({t.lower() for t in tags} - {t.lower() for t in base_tags}, character_tags)


def leak(pixel: float, tags: float) -> float:
    """One leak number per sample: the larger of the pixel distance and the character's gain (either counts)."""
    return max(pixel, tags)


@dataclass(frozen=True)
class CellScore:
    epoch: int
    weight: float
    fidelity: float   # mean over the trigger prompts' samples
    leak: float       # mean over the control prompts' samples


@dataclass(frozen=True)
class Recommendation:
    epoch: int
    weight: float
    explanation: str


def recommend(scores: Sequence[CellScore], *, max_leak: float) -> Recommendation:
    """Best fidelity with leak ≤ max_leak; ties go to the lower weight (less leak elsewhere), then the
    earlier epoch (less overfit). If every cell leaks too much, the least leaky one, said plainly."""
    if not scores:
        raise ValueError("no scores to recommend from")
    candidates = [s for s in scores if s.weight > 0]  # weight 0 is the base model, not a choice
    if not candidates:
        raise ValueError("only weight-0 scores: nothing was sampled with the LoRA on")
    safe = [s for s in candidates if s.leak <= max_leak]
    if safe:
        best = max(safe, key=lambda s: (s.fidelity, -s.weight, -s.epoch))
        return Recommendation(best.epoch, best.weight, (
            f"Epoch {best.epoch} at weight {best.weight:g} shows the most of your character "
            f"({best.fidelity:.0%} of its tags) while changing other prompts by only {best.leak:.0%}."))
    best = min(candidates, key=lambda s: (s.leak, -s.fidelity))
    return Recommendation(best.epoch, best.weight, (
        f"Every epoch and weight changes prompts without the trigger by more than {max_leak:.0%}; the least "
        f"is epoch {best.epoch} at weight {best.weight:g} ({best.leak:.0%}). Try fewer epochs, a lower learning "
        "rate or more regularization pictures."))
