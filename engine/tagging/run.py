"""Tag a folder of images: preprocessing in a thread pool runs ahead of the model, batches go through
one reused session, and each caption lands beside its image as `<stem>.txt` (kohya's layout)."""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from itertools import islice
from pathlib import Path

import numpy as np

from engine.tagging import TaggerError
from engine.tagging.model import Tagger
from engine.tagging.options import TagOptions
from engine.tagging.preprocess import load_rgb, prepare
from engine.tagging.tags import Captioner
from storage.layout import atomic_write_text

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"})
# Pillow decodes and resizes without the GIL, so threads preprocess in parallel; more than 8 only
# adds memory (each prepared image is 2.4 MB) without feeding the model faster.
MAX_PREPROCESS_THREADS = 8

ProgressFn = Callable[[int, int], None]  # (images done, images in the folder)


def list_images(folder: Path) -> list[Path]:
    """The folder's pictures by name; a missing folder has none. Dot files are atomic-write temps."""
    if not folder.is_dir():
        return []
    images = sorted(p for p in folder.iterdir()
                    if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())
    stems: dict[str, str] = {}
    for path in images:
        other = stems.setdefault(path.stem, path.name)
        if other != path.name:
            raise TaggerError(f"{other} and {path.name} would share the caption file {path.stem}.txt: "
                              "rename or remove one of them")
    return images


def tag_folder(folder: Path, options: TagOptions, trigger: str | None, on_progress: ProgressFn, *,
               tagger: Tagger | None = None) -> dict[str, str]:
    """image file name → caption, for every picture in `folder`; also written to `<stem>.txt`.
    Pass an opened `tagger` to reuse its session across folders."""
    return tag_files(list_images(folder), options, trigger, on_progress, tagger=tagger)


def tag_files(images: list[Path], options: TagOptions, trigger: str | None, on_progress: ProgressFn, *,
              tagger: Tagger | None = None) -> dict[str, str]:
    """tag_folder for chosen pictures (e.g. only a job's new ones): file name → caption, `.txt` beside each."""
    if not images:
        return {}
    tagger = tagger or Tagger.open(options.model, options.cache_dir)
    captioner = Captioner(tagger.table, options)
    captions: dict[str, str] = {}
    # closing(): a failed write stops the preprocessing threads now, not when the traceback is freed.
    with closing(predict_batches(tagger, images, options.batch_size)) as batches:
        for paths, probabilities in batches:
            for path, row in zip(paths, probabilities, strict=True):
                caption = captioner.caption(row, trigger)
                atomic_write_text(path.with_suffix(".txt"), caption)
                captions[path.name] = caption
            on_progress(len(captions), len(images))
    return captions


def predict_batches(tagger: Tagger, paths: list[Path], batch_size: int) -> Iterator[tuple[list[Path], np.ndarray]]:
    """(paths, probabilities) per batch, in order. While the model runs one batch, the pool is
    already preparing the next, so neither the CPU cores nor the GPU wait for the other."""
    batch = tagger.fixed_batch or batch_size
    threads = min(MAX_PREPROCESS_THREADS, _usable_cpus())
    # Enough queued to keep every thread busy and one full batch ready behind the running one.
    window = max(2 * batch, 2 * threads)
    pool = ThreadPoolExecutor(threads, thread_name_prefix="tagger-preprocess")
    todo = iter(paths)
    queued: deque[tuple[Path, Future[np.ndarray]]] = deque()

    def top_up() -> None:
        for path in islice(todo, window - len(queued)):
            queued.append((path, pool.submit(_prepare_file, path, tagger.size)))

    try:
        top_up()
        while queued:
            chunk = [queued.popleft() for _ in range(min(batch, len(queued)))]
            top_up()
            arrays = np.stack([future.result() for _, future in chunk])
            yield [path for path, _ in chunk], tagger.predict(arrays)
    finally:
        # A failure (or a consumer that stops early) must not leave the pool preparing the rest.
        pool.shutdown(wait=True, cancel_futures=True)


def _usable_cpus() -> int:
    # The CPUs this process may run on (a container or taskset can grant fewer than the machine has).
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _prepare_file(path: Path, size: int) -> np.ndarray:
    return prepare(load_rgb(path), size)
