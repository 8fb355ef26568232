"""Sample-grid render time: our renderer vs the pipeline rebuilt per cell vs pure sampling.

Goal (issue 6): rendering the sample grids takes ≤ 1.15× the pure sampling time of their images.

- **ours**: `SampleRenderer.render(lora_files, spec)` + `grids(...)` on a renderer whose base pipeline is
  already loaded. As in the warm GPU worker, that is the pipeline the training before it used, kept and put
  back as loaded (engine.models.warm); a samples job in a fresh process loads it once instead (timed apart
  with `--cold`). It loads each LoRA file into the pipeline in memory, sets each weight with
  `set_adapters`, and unloads the file again.
- **rebuilt**: the naive way, per grid cell: `load_pipeline`, `load_lora_weights`, `set_adapters`, one
  image; then the same `grids(...)`. Its images must equal ours (the max pixel difference is printed).
- **pure sampling**: one pipeline, one LoRA file loaded once at weight 1, and the same number of
  `pipeline()` calls with the same prompts, seeds, steps, guidance and size: no swapping, no grids.

Both of our files come from a real (tiny) training run of two epochs, with text-encoder LoRA, unless
`--lora` names files. Rounds alternate A B C, C B A; the median round of each is reported. With the tiny
model an image costs little, so the fixed costs (LoRA load/unload, grid drawing) weigh more than with a
real model at 512 px and 28 steps: run it with `--base-model` on a GPU for those.

    .venv/bin/python -m bench.grid_render [--size 64 --steps 10 --rounds 2] [--json]
    .venv/bin/python -m bench.grid_render --base-model PATH --device cuda --size 512 --steps 28
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import peft
import torch

from bench.common import THREADS_HELP, base_model, default_threads, interleaved, machine, quiet_libraries
from engine.devtools.pictures import picture
from engine.models import warm
from engine.models.base import BaseModelInfo, load_pipeline
from engine.samples.render import Sample, SampleRenderer, SampleSpec, grids

GOAL = 1.15
SIDES = ("ours", "rebuilt per cell", "pure sampling")
MAX_BYTES = 10 * 2**20   # Discord's default upload limit, as the samples job uses
PROMPTS = ["tok, portrait", "a castle on a hill at sunset"]


@dataclasses.dataclass(frozen=True)
class Job:
    info: BaseModelInfo
    files: dict[str, Path]
    spec: SampleSpec
    device: str
    dtype: Any

    def cells(self) -> list[tuple[str, float, str, bool, int]]:
        """(label, weight, prompt, is_control, seed) of every grid cell, in render's order."""
        return [(label, float(w), prompt, is_control, seed) for label in self.files for w in self.spec.weights
                for prompt, is_control in self.spec.all_prompts() for seed in self.spec.seeds]

    def rendered_images(self) -> int:
        """How many images ours renders: weight-0 (base model) images once per prompt and seed, not per file."""
        cases = len(self.spec.all_prompts()) * len(self.spec.seeds)
        nonzero = sum(1 for w in self.spec.weights if float(w) != 0.0)
        return cases * (len(self.files) * nonzero + (1 if 0.0 in map(float, self.spec.weights) else 0))


def sample(job: Job, pipe: Any, prompt: str, seed: int) -> Any:
    """One image, called exactly as SampleRenderer calls the pipeline."""
    spec = job.spec
    return pipe(prompt=prompt, negative_prompt=spec.negative_prompt or None, num_inference_steps=spec.steps,
                guidance_scale=spec.guidance, width=spec.size[0], height=spec.size[1],
                generator=torch.Generator(job.device).manual_seed(seed), output_type="pil").images[0]


def fresh_pipeline(job: Job) -> Any:
    pipe = load_pipeline(job.info, dtype=job.dtype, device=job.device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Ours:
    """render + grids, keeping the grid-drawing seconds apart to show where ours' extra time goes."""

    def __init__(self) -> None:
        self.grid_seconds: list[float] = []

    def __call__(self, job: Job, renderer: SampleRenderer) -> list[Sample]:
        samples = renderer.render(job.files, job.spec)
        started = time.perf_counter()
        grids(samples, title="bench", max_bytes=MAX_BYTES)
        self.grid_seconds.append(time.perf_counter() - started)
        return samples


def rebuilt(job: Job, _renderer: SampleRenderer) -> list[Sample]:
    samples = []
    for label, weight, prompt, is_control, seed in job.cells():
        pipe = fresh_pipeline(job)
        if weight:
            pipe.load_lora_weights(str(job.files[label]), adapter_name="cell")
            pipe.set_adapters(["cell"], adapter_weights=[weight])
        samples.append(Sample(label, weight, prompt, seed, is_control, sample(job, pipe, prompt, seed)))
        del pipe
    grids(samples, title="bench", max_bytes=MAX_BYTES)
    return samples


class Pure:
    """A pipeline with the first LoRA file loaded at weight 1, set up once, outside the timing."""

    def __init__(self, job: Job) -> None:
        self.pipe = fresh_pipeline(job)
        self.pipe.load_lora_weights(str(next(iter(job.files.values()))), adapter_name="pure")
        self.pipe.set_adapters(["pure"], adapter_weights=[1.0])
        cases = [(p, s) for p, _ in job.spec.all_prompts() for s in job.spec.seeds]
        self.calls = [cases[i % len(cases)] for i in range(job.rendered_images())]

    def __call__(self, job: Job, _renderer: SampleRenderer) -> list[Sample]:
        for prompt, seed in self.calls:
            sample(job, self.pipe, prompt, seed)
        return []


def max_difference(a: list[Sample], b: list[Sample]) -> int:
    """The largest pixel difference between the same cell in both lists (0: the same images)."""
    by_cell = {(s.label, s.weight, s.prompt, s.seed): np.asarray(s.image, dtype=np.int16) for s in b}
    return max(int(np.abs(np.asarray(s.image, dtype=np.int16) - by_cell[(s.label, s.weight, s.prompt, s.seed)])
                   .max()) for s in a)


def train_two_epochs(root: Path, base_model: str, device: str) -> dict[str, Path]:
    """Two epoch files from a real (short) training run: UNet and text-encoder LoRA, kohya format."""
    from engine.training.options import preset
    from engine.training.trainer import TrainSpec, train

    dataset = root / "project" / "dataset"
    dataset.mkdir(parents=True)
    for i in range(2):
        (dataset / f"{i}.png").write_bytes(picture(i, size=(64, 64)))
        (dataset / f"{i}.txt").write_text(f"tok, tag{i}", encoding="utf-8")
    options = dataclasses.replace(preset("sd15"), resolution=64, bucket_min=64, bucket_max=64, repeats=1, epochs=2,
                                  batch_size=2, network_dim=8, network_alpha=4.0, optimizer="adamw",
                                  unet_lr=1e-2, text_encoder_lr=1e-2, mixed_precision="no")
    result = train(TrainSpec(project_dir=root / "project", name="bench", base_model=base_model, options=options,
                             trigger="tok", device=device), lambda _: None)
    return {path.stem: path for path in result.epoch_paths}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", default="", help="SD1.x diffusers folder or .safetensors (default: tiny)")
    parser.add_argument("--lora", action="append", default=[], help="a LoRA file (repeat; default: train two)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=64, help="sample width and height, a multiple of 8")
    parser.add_argument("--steps", type=int, default=10, help="sampling steps per image")
    parser.add_argument("--weights", default="0.4,0.7,1.0", help="LoRA weights, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each side, alternating")
    parser.add_argument("--cold", action="store_true",
                        help="ours loads its base model itself, as a samples job in a fresh process does")
    parser.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    say: Callable[..., None] = (lambda *_: None) if args.json else print
    quiet_libraries()
    threads = default_threads(args.device) if args.threads is None else args.threads
    if threads:
        torch.set_num_threads(threads)

    try:
        spec = SampleSpec(prompts=PROMPTS[:1], control_prompts=PROMPTS[1:], negative_prompt="blurry",
                          weights=[float(w) for w in args.weights.split(",")], seeds=[42], steps=args.steps,
                          guidance=7.0, size=(args.size, args.size))
        spec.check()
    except ValueError as exc:
        parser.error(f"{exc} (check --size, --steps and --weights, e.g. --weights 0.4,0.7,1)")
    missing = [f for f in args.lora if not Path(f).is_file()]
    if missing:
        parser.error(f"--lora {missing[0]}: no such file; give a LoRA .safetensors file")

    with tempfile.TemporaryDirectory(prefix="lorabake-bench-") as tmp:
        root = Path(tmp)
        info = base_model(args.base_model, root, parser)
        base = info.spec
        warm.keep_models(not args.cold)   # the training's pipeline is kept, as in the warm worker
        files = {Path(f).stem: Path(f) for f in args.lora} or train_two_epochs(root, base, args.device)
        dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
        job = Job(info, files, spec, args.device, dtype)

        warm.reset()   # what the warm worker does between the training and the samples job
        started = time.perf_counter()
        renderer = SampleRenderer(job.info, device=args.device, dtype=dtype)
        renderer_load = time.perf_counter() - started
        warm.keep_models(False)   # the other sides load their own pipelines
        pure, ours = Pure(job), Ours()
        runs: dict[str, Callable[[Job, SampleRenderer], list[Sample]]] = {
            "ours": ours, "rebuilt per cell": rebuilt, "pure sampling": pure}
        say(f"machine: {machine(torch, diffusers, peft)}; device {args.device}")
        say(f"model: {args.base_model or 'tiny SD1.5 (engine.devtools.tiny_models)'}; {len(files)} LoRA files × "
            f"{len(spec.weights)} weights × {len(spec.all_prompts())} prompts = {len(job.cells())} cells, "
            f"{job.rendered_images()} images rendered; {args.size}×{args.size}, {args.steps} steps, CFG 7; "
            f"{threads or 'default'} torch threads")
        ours(job, renderer)   # warm-up: first-call costs (allocator, kernels, file cache) out of round 1
        pure(job, renderer)
        ours.grid_seconds.clear()

        seconds: dict[str, list[float]] = {side: [] for side in SIDES}
        images: dict[str, list[Sample]] = {}
        for round_no in range(args.rounds):
            for side in interleaved(SIDES, round_no):
                started = time.perf_counter()
                images[side] = runs[side](job, renderer)
                seconds[side].append(time.perf_counter() - started)
                say(f"round {round_no + 1} {side:>16}: {seconds[side][-1]:6.2f} s")
        medians = {side: statistics.median(values) for side, values in seconds.items()}
        difference = max_difference(images["ours"], images["rebuilt per cell"])
        ours_ratio = medians["ours"] / medians["pure sampling"]
        rebuilt_ratio = medians["rebuilt per cell"] / medians["pure sampling"]
        if args.json:
            print(json.dumps({
                "bench": "grid_render", "over_pure_sampling": ours_ratio, "machine": machine(torch, diffusers, peft),
                "device": args.device, "size": args.size,
                "steps": args.steps, "weights": spec.weights, "lora_files": len(files), "cells": len(job.cells()),
                "images_rendered": job.rendered_images(), "seconds": seconds, "median_s": medians,
                "renderer_load_s": renderer_load, "ours_over_pure": ours_ratio, "rebuilt_over_pure": rebuilt_ratio,
                "goal": GOAL, "max_pixel_difference_ours_vs_rebuilt": difference,
                "ours_grid_drawing_s": ours.grid_seconds, "warm": not args.cold,
            }))
            return
        print(f"\n{'side':>16} | {'s per round':<16} | {'median':>7} | {'× pure':>6}")
        for side in SIDES:
            per_round = " ".join(f"{s:.2f}" for s in seconds[side])
            ratio = medians[side] / medians["pure sampling"]
            print(f"{side:>16} | {per_round:<16} | {medians[side]:6.2f}s | {ratio:5.2f}×")
        verdict = "met" if ours_ratio <= GOAL else "NOT met"
        print(f"\nours / pure sampling: {ours_ratio:.2f}× (goal ≤ {GOAL}×: {verdict})")
        print(f"rebuilt per cell / pure sampling: {rebuilt_ratio:.2f}×; rebuilt / ours: "
              f"{medians['rebuilt per cell'] / medians['ours']:.2f}×")
        print(f"ours' base model ({'loaded' if args.cold else 'kept from the training'}, not in its rounds): "
              f"{renderer_load:.2f} s; with it, ours / pure = "
              f"{(medians['ours'] + renderer_load) / medians['pure sampling']:.2f}×")
        print(json.dumps({"bench": "grid_render", "over_pure_sampling": round(ours_ratio, 3),
                          "rebuilt_over_pure": round(rebuilt_ratio, 3), "warm": not args.cold,
                          "renderer_load_s": round(renderer_load, 3)}))
        print(f"ours' time beyond pure sampling: {medians['ours'] - medians['pure sampling']:.2f} s, of which "
              f"drawing and encoding the grids {statistics.median(ours.grid_seconds):.2f} s; the rest is loading "
              f"and unloading {len(files)} LoRA files, setting weights, and noise")
        print(f"largest pixel difference, ours vs rebuilt, same cell: {difference} (0 = the same images)")


if __name__ == "__main__":
    main()
