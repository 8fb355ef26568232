"""The training data of a LoRA run, as kohya sd-scripts arranges it (DESIGN §3).

- `load_items`: the pictures of `dataset/` and `reg/` with their captions (same-name `.txt`).
- `epoch_schedule`: one epoch's samples — every training picture `repeats` times, regularization pictures
  balanced round-robin to the same number (flagged `is_reg`, weighted by prior_loss_weight), shuffled with
  a per-epoch seed, so a resumed run sees exactly the epochs it would have seen.
- `as_reg_captions`: what a reg picture is trained on (its tags by default, or the class alone).
- `shuffle_caption`: tags after the first `keep_tokens` shuffled (the trigger word stays first).
  What a caption says (the trigger first, a reg picture's class) is in captions.py.
- Aspect-ratio buckets (`make_buckets`, `pick_bucket`, `make_batches`): each picture is resized and
  centre-cropped to the bucket closest to its aspect ratio; a batch holds one bucket only.
- `Placement` / `sdxl_time_ids`: SDXL's size conditioning of a bucketed picture, as sd-scripts computes it.
- Caches keyed by sample, never by step index (the bug in diffusers' advanced script): latents by
  (picture, bucket, flip), text embeddings by caption text.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import random
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from engine.imaging import resize
from engine.training.captions import reg_caption

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")   # what kohya sd-scripts loads

Bucket = tuple[int, int]   # (width, height) in pixels


@dataclass(frozen=True)
class Item:
    path: Path
    caption: str


@dataclass(frozen=True)
class Sample:
    item: Item
    is_reg: bool = False


def _pictures(folder: Path | None) -> list[Item]:
    if folder is None or not Path(folder).is_dir():
        return []
    items = []
    for path in sorted(Path(folder).iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        text = path.with_suffix(".txt")
        if text.is_file():
            caption = text.read_text(encoding="utf-8", errors="replace").strip()
        else:
            log.warning("%s has no caption file (%s): training it with an empty caption", path.name, text.name)
            caption = ""
        items.append(Item(path, caption))
    return items


def load_items(dataset_dir: Path, reg_dir: Path | None) -> tuple[list[Item], list[Item]]:
    """(training items, regularization items), each sorted by file name. A missing caption becomes ""."""
    return _pictures(dataset_dir), _pictures(reg_dir)


def epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7919) % (2**32)


def epoch_schedule(train: list[Item], reg: list[Item], repeats: int, seed: int, epoch: int) -> list[Sample]:
    """Every training item `repeats` times; with reg items, as many reg samples (round-robin, so a few reg
    pictures are cycled and surplus ones unused); shuffled with a seed derived from (seed, epoch)."""
    samples = [Sample(item, False) for item in train for _ in range(repeats)]
    if reg:
        count = len(samples)
        samples += [Sample(reg[i % len(reg)], True) for i in range(count)]
    random.Random(epoch_seed(seed, epoch)).shuffle(samples)
    return samples


def shuffle_caption(caption: str, keep_tokens: int, rng: random.Random) -> str:
    """Comma-separated tags; the first `keep_tokens` stay in place, the rest are shuffled."""
    tags = [t.strip() for t in caption.split(",") if t.strip()]
    head, tail = tags[:keep_tokens], tags[keep_tokens:]
    rng.shuffle(tail)
    return ", ".join(head + tail)


def as_reg_captions(items: list[Item], class_name: str, mode: str) -> list[Item]:
    """Regularization items with the caption they are trained on (TrainOptions.reg_captions)."""
    return [dataclasses.replace(item, caption=reg_caption(item.caption, class_name, mode)) for item in items]


# --- aspect-ratio buckets ---------------------------------------------------------------------------


def make_buckets(resolution: int, bucket_min: int, bucket_max: int, step: int) -> list[Bucket]:
    """sd-scripts' bucket list: widths from min to max in `step`s, each with the largest height (a multiple
    of `step`, ≤ max) keeping the area ≤ resolution²; both orientations; plus the square."""
    area = resolution * resolution
    buckets = {(resolution, resolution)}
    width = bucket_min
    while width <= bucket_max:
        height = min(bucket_max, (area // width) // step * step)
        if height >= bucket_min:
            buckets.add((width, height))
            buckets.add((height, width))
        width += step
    return sorted(buckets)


def pick_bucket(size: tuple[int, int], buckets: list[Bucket]) -> Bucket:
    """sd-scripts' choice: a picture of a bucket's exact size goes there; else the bucket whose width/height
    differs least from the picture's, ties to the first in the (sorted) bucket list, as its argmin."""
    if tuple(size) in buckets:
        return (size[0], size[1])
    ratio = size[0] / size[1]
    return min(buckets, key=lambda b: abs(b[0] / b[1] - ratio))


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        return image.size


@dataclass(frozen=True)
class Placement:
    """How one sample's picture was put into its bucket: what SDXL's size conditioning describes."""
    original: tuple[int, int]   # (width, height) of the picture before resizing (after EXIF rotation)
    bucket: Bucket
    flip: bool = False


def crop_ltrb(bucket: Bucket, original: tuple[int, int]) -> tuple[float, float, float, float]:
    """sd-scripts' `BucketManager.get_crop_ltrb`: the box the picture would fill if fitted inside the bucket.

    This is what sd-scripts reports as the crop (it follows Stability AI's preprocessing), not the pixels
    our cover-and-centre-crop cut off; we report the same so a LoRA sees what sd-scripts' LoRAs saw."""
    bucket_ar, image_ar = bucket[0] / bucket[1], original[0] / original[1]
    if bucket_ar > image_ar:   # the bucket is wider: match heights
        width, height = bucket[1] * image_ar, float(bucket[1])
    else:
        width, height = float(bucket[0]), bucket[0] / image_ar
    left, top = (bucket[0] - width) // 2, (bucket[1] - height) // 2
    return left, top, left + width, top + height


def sdxl_time_ids(placement: Placement) -> tuple[int, int, int, int, int, int]:
    """SDXL's added time ids (original_h, original_w, crop_top, crop_left, target_h, target_w), computed
    as sd-scripts does for a (possibly mirrored) bucketed picture."""
    (orig_w, orig_h), (target_w, target_h) = placement.original, placement.bucket
    left, top, right, _ = crop_ltrb(placement.bucket, placement.original)
    if placement.flip:   # mirrored: the right margin becomes the left one
        left = target_w - right
    return int(orig_h), int(orig_w), int(top), int(left), int(target_h), int(target_w)


def load_pixels(path: Path, bucket: Bucket, flip: bool = False) -> torch.Tensor:
    """The picture resized to cover `bucket`, centre-cropped to it, optionally mirrored: a (3, H, W) float
    tensor in [-1, 1]. Transparency is composited on white."""
    width, height = bucket
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened)
        if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, rgba)
        image = image.convert("RGB")
    # Scaled to cover the bucket (rounded half up, as sd-scripts), then centre-cropped to it.
    scale = max(width / image.width, height / image.height)
    resized = (max(width, int(image.width * scale + 0.5)), max(height, int(image.height * scale + 0.5)))
    image = resize(image, *resized)
    left, top = (resized[0] - width) // 2, (resized[1] - height) // 2
    image = image.crop((left, top, left + width, top + height))
    if flip:
        image = ImageOps.mirror(image)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def make_batches(samples: list[Sample], bucket_of: Callable[[Sample], Bucket], batch_size: int,
                 rng: random.Random) -> list[list[Sample]]:
    """Group samples by bucket (keeping their shuffled order), cut each group into batches, shuffle the
    batches. Every batch holds one bucket only."""
    groups: dict[Bucket, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(bucket_of(sample), []).append(sample)
    batches = [group[i:i + batch_size] for _, group in sorted(groups.items())
               for i in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches


def count_batches(samples: list[Sample], bucket_of: Callable[[Sample], Bucket], batch_size: int) -> int:
    counts: dict[Bucket, int] = {}
    for sample in samples:
        bucket = bucket_of(sample)
        counts[bucket] = counts.get(bucket, 0) + 1
    return sum(math.ceil(n / batch_size) for n in counts.values())


# --- caches -----------------------------------------------------------------------------------------


class KeyedCache:
    """A dict with hit/miss counts. Keys describe the sample (picture, bucket, flip) or the caption text."""

    def __init__(self) -> None:
        self._data: dict[Hashable, Any] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        if key in self._data:
            self.hits += 1
            return self._data[key]
        self.misses += 1
        value = compute()
        self._data[key] = value
        return value

    def peek(self, key: Hashable) -> Any:
        return self._data.get(key)

    def keys(self) -> list[Hashable]:
        return list(self._data)

    def __len__(self) -> int:
        return len(self._data)


def latent_key(path: Path, bucket: Bucket, flip: bool) -> tuple[str, int, int, bool]:
    return (str(path), bucket[0], bucket[1], bool(flip))


class LatentCache(KeyedCache):
    """Latents keyed by (picture, bucket, flip), kept on the CPU: a sample of the VAE posterior × scaling
    factor, as sd-scripts caches them (not its mean), drawn with a seed of its own per key so a resumed or
    reordered run encodes every picture the same."""

    def __init__(self, vae: torch.nn.Module, device: str | torch.device, seed: int = 0) -> None:
        super().__init__()
        self.vae = vae
        self.device = device
        self.seed = seed

    def encode(self, path: Path, bucket: Bucket, flip: bool) -> torch.Tensor:
        pixels = load_pixels(path, bucket, flip).unsqueeze(0).to(self.device, dtype=self.vae.dtype)
        if next(self.vae.parameters()).is_meta:
            raise RuntimeError(f"the VAE was freed before {path.name} at {bucket} was encoded")
        key = f"{self.seed}:{path.name}:{bucket[0]}x{bucket[1]}:{int(flip)}".encode()
        generator = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))
        with torch.no_grad():
            posterior = self.vae.encode(pixels).latent_dist
            latent = posterior.sample(generator=generator) * self.vae.config.scaling_factor
        return latent[0].float().cpu()

    def latent(self, path: Path, bucket: Bucket, flip: bool) -> torch.Tensor:
        return self.get(latent_key(path, bucket, flip), lambda: self.encode(path, bucket, flip))

    def fill(self, placements: Iterable[tuple[Path, Bucket, bool]]) -> None:
        """Encodes every (picture, bucket, flip) a run will ask for, so the VAE can go before step 1."""
        for path, bucket, flip in placements:
            self.latent(path, bucket, flip)
