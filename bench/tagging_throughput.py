"""Tagging throughput (images/s): our pipeline vs a one-image-at-a-time loop.

Goal (from the issue): ≥ 2× the loop. The loop is how kohya's script runs a batch-1 model (and any
model without --max_data_loader_n_workers): load, preprocess, run the model on that one image, write
its caption, next. Both sides use the same opened session (the tiny WD-style tagger, dynamic batch),
the same preprocessing functions, the same captioner and the same atomic caption writes, on the same
folder of generated pictures of mixed sizes and formats. Rounds alternate A B, B A, … so that drift
of a noisy machine hits both alike; the median round of each is reported.

The tiny tagger's compute is negligible (an 8×8 average pool and one linear layer), so this measures
the pipeline around the model: decoding, padding, resizing, batching, writing. With a real WD model
on the CPU the model dominates and batching gains less; on a GPU the pipeline is what limits.

Printed, not asserted:  cd /work/main && .venv/bin/python -m bench.tagging_throughput [--images 200]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import PIL
from PIL import Image

from bench.common import machine
from engine.devtools.tiny_models import write_tiny_tagger
from engine.tagging.model import Tagger
from engine.tagging.options import TagOptions
from engine.tagging.preprocess import load_rgb, prepare
from engine.tagging.run import MAX_PREPROCESS_THREADS, list_images, tag_folder
from engine.tagging.tags import Captioner
from storage.layout import atomic_write_text

TRIGGER = "XingBar"
GOAL = 2.0
SIDES = (256, 384, 512, 640, 768, 896, 1024, 1280, 1536, 2048)  # intake caps the long side at 2048


def write_pictures(folder: Path, count: int, seed: int = 0) -> None:
    """Photo-like content (smooth colour fields plus grain, which compresses like a photo rather than
    like pure noise), as JPEG mostly, PNG and transparent PNG now and then, in mixed sizes."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        long_side = int(rng.choice(SIDES))
        short_side = int(long_side * rng.uniform(0.5, 1.0))
        width, height = (long_side, short_side) if i % 2 else (short_side, long_side)
        colours = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
        field = colours.resize((width, height), Image.Resampling.BICUBIC)
        grain = rng.normal(0, 6, (height, width, 1))
        image = Image.fromarray(np.clip(np.asarray(field) + grain, 0, 255).astype(np.uint8))
        if i % 10 == 9:
            image.putalpha(Image.linear_gradient("L").resize((width, height)))
            image.save(folder / f"pic{i:03d}.png")
        elif i % 5 == 4:
            image.save(folder / f"pic{i:03d}.png")
        else:
            image.save(folder / f"pic{i:03d}.jpg", quality=92)


def one_at_a_time(tagger: Tagger, folder: Path, options: TagOptions) -> dict[str, str]:
    """The reference loop: one image through every step before the next one starts."""
    captioner = Captioner(tagger.table, options)
    captions = {}
    for path in list_images(folder):
        image = prepare(load_rgb(path), tagger.size)[None]
        probabilities = tagger.session.run(None, {tagger.input_name: image})[0][0]
        captions[path.name] = captioner.caption(probabilities, TRIGGER)
        atomic_write_text(path.with_suffix(".txt"), captions[path.name])
    return captions


def pipeline(tagger: Tagger, folder: Path, options: TagOptions) -> dict[str, str]:
    return tag_folder(folder, options, TRIGGER, lambda *_: None, tagger=tagger)


def timed(run, tagger: Tagger, folder: Path, options: TagOptions) -> tuple[float, dict[str, str]]:
    start = time.perf_counter()
    captions = run(tagger, folder, options)
    return time.perf_counter() - start, captions


def _pixels(path: Path) -> int:
    with Image.open(path) as image:
        return image.width * image.height


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each side, alternating")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lorabake-bench-") as tmp:
        root = Path(tmp)
        folder = root / "dataset"
        folder.mkdir()
        write_pictures(folder, args.images)
        tagger = Tagger.open(str(write_tiny_tagger(root / "tagger")), "")
        options = TagOptions(model=str(root / "tagger"), batch_size=args.batch)
        megapixels = sum(_pixels(path) for path in list_images(folder)) / 1e6

        print(f"machine: {machine(onnxruntime, PIL, np)}")
        print(f"tagger: tiny WD-style ONNX on {tagger.provider}, input {tagger.size}×{tagger.size}, "
              f"{len(tagger.table)} tags")
        print(f"images: {args.images} ({megapixels / args.images:.2f} MP average; JPEG, PNG, transparent PNG)")
        print(f"pipeline: batch {args.batch}, {min(MAX_PREPROCESS_THREADS, len(os.sched_getaffinity(0)))} "
              "preprocessing threads, one session; reference: one image at a time, same session\n")

        sides = {"one-at-a-time": one_at_a_time, "pipeline": pipeline}
        reference = pipeline(tagger, folder, options)  # warm-up: file cache, session, thread start-up
        assert one_at_a_time(tagger, folder, options) == reference, "the two sides must write the same captions"
        seconds: dict[str, list[float]] = {name: [] for name in sides}
        for round_no in range(args.rounds):
            order = list(sides) if round_no % 2 == 0 else list(reversed(sides))
            for name in order:
                elapsed, captions = timed(sides[name], tagger, folder, options)
                assert captions == reference
                seconds[name].append(elapsed)
                print(f"round {round_no + 1}  {name:>14}: {args.images / elapsed:7.1f} images/s ({elapsed:.2f} s)")

        rates = {name: args.images / statistics.median(values) for name, values in seconds.items()}
        ratio = rates["pipeline"] / rates["one-at-a-time"]
        print(f"\nmedian one-at-a-time: {rates['one-at-a-time']:.1f} images/s")
        print(f"median pipeline:      {rates['pipeline']:.1f} images/s")
        print(f"ratio: {ratio:.2f}× (goal ≥ {GOAL:.0f}×: {'met' if ratio >= GOAL else 'NOT met'})")


if __name__ == "__main__":
    main()
