"""Render the sample images of DESIGN §1 step 7: for each saved epoch's LoRA file, fixed prompts and seeds
at several LoRA weights, then one labelled grid per prompt (rows = epochs, columns = weights).

How the weight sweep is done (diffusers 0.42 / peft 0.21):
- The base pipeline is loaded once. Each LoRA file is loaded into it in memory
  (`load_lora_weights(path, adapter_name=…)`) and taken out again with `unload_lora_weights()`, which
  removes the peft layers from the UNet *and* the text encoder(s); the frozen base weights are never
  touched (nothing is fused), so the next file starts from the exact base model.
- The weight is set with `set_adapters([name], adapter_weights=[w])`. That sets peft's scaling to
  w · alpha / rank in every LoRA layer of the UNet and of the text encoder(s) — an absolute value.
  `cross_attention_kwargs={"scale": w}` scales both too, but by multiplying the current scaling by w and
  dividing it back afterwards (and resetting it on w = 0), so repeated sweeps drift by rounding;
  set_adapters does not. We therefore never pass cross_attention_kwargs as well (it would square the weight).
- Weight 0 is the base model: those images are the same for every LoRA file, so they are rendered once,
  with no LoRA loaded at all, and reused for every row (the base-model column).
- A weight's prompts × seeds are drawn in batches of `batch_size`, each image with its own seeded generator
  (engine.models.inference.draw), so a cell is reproducible on its own, whatever the batch size.
torch and diffusers are imported where they are used.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from engine.models.base import BaseModelInfo
from engine.models.inference import draw, load_inference_pipeline, preferred_device, to_image
from engine.samples.grid import GridImage, encode_for_discord

DEFAULT_WEIGHTS = (0.0, 0.4, 0.6, 0.8, 1.0)
DEFAULT_NEGATIVE = "lowres, bad anatomy, bad hands, worst quality, low quality, jpeg artifacts, blurry"


def default_prompts(trigger: str, class_name: str) -> tuple[list[str], list[str]]:
    """(trigger prompts, control prompts).

    The trigger prompts show the character in a few contexts (a portrait, a full figure in a scene, a
    different expression), so fidelity is not judged on one framing the dataset happened to favour.
    The control prompts never name the trigger: "a {class} standing in a park" is the second trigger prompt
    without the trigger, so any drift toward the character there is the LoRA taking over its whole class
    (every man looks like XingBar); "a castle on a hill at sunset" shares nothing with the dataset, so drift
    there is style leak. Both compare against the same prompt and seed at weight 0 (the base model)."""
    trigger, class_name = trigger.strip(), class_name.strip()
    if not trigger:
        raise ValueError("the trigger word is empty: set the project's trigger word first")
    if not class_name:
        raise ValueError("the class is empty: set the project's class (e.g. man, woman, 1girl) first")
    trigger_prompts = [
        f"{trigger}, portrait",
        f"{trigger} {class_name} standing in a park",
        f"{trigger}, upper body, smiling",
    ]
    control_prompts = [f"a {class_name} standing in a park", "a castle on a hill at sunset"]
    return trigger_prompts, control_prompts


class OutOfMemory(RuntimeError):
    """The GPU ran out of memory drawing a batch; the message names the setting to lower."""


@dataclass(frozen=True)
class SampleSpec:
    prompts: list[str]                       # trigger prompts
    control_prompts: list[str] = field(default_factory=list)   # prompts without the trigger (leak)
    negative_prompt: str = DEFAULT_NEGATIVE
    weights: list[float] = field(default_factory=lambda: list(DEFAULT_WEIGHTS))
    seeds: list[int] = field(default_factory=lambda: [42])
    steps: int = 28
    guidance: float = 7.0
    size: tuple[int, int] = (512, 512)       # (width, height)
    # SD 1.x: the text encoder layer prompts are read from, counted from the end, as the LoRA was trained
    # (A1111's "clip skip"; 2 for most anime models). SDXL has no such setting.
    clip_skip: int = 1
    # Images per pipeline call: more is faster until the GPU's memory runs out; never changes a picture.
    batch_size: int = 4

    def all_prompts(self) -> list[tuple[str, bool]]:
        """(prompt, is_control), trigger prompts first."""
        return [(p, False) for p in self.prompts] + [(p, True) for p in self.control_prompts]

    def check(self) -> None:
        if not self.all_prompts():
            raise ValueError("no sample prompts: give at least one prompt")
        if any(not p.strip() for p, _ in self.all_prompts()):
            raise ValueError("a sample prompt is empty")
        if not self.weights:
            raise ValueError("no LoRA weights to sample at: give at least one (e.g. 0, 0.6, 1.0)")
        if any(not 0.0 <= float(w) <= 2.0 for w in self.weights):
            raise ValueError(f"LoRA weights must lie between 0 and 2, got {list(self.weights)}")
        if len(set(map(float, self.weights))) != len(self.weights):
            raise ValueError(f"LoRA weights repeat: {list(self.weights)}")
        if not self.seeds:
            raise ValueError("no seeds: give at least one")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds repeat: {list(self.seeds)}")
        if not 1 <= self.steps <= 150:
            raise ValueError(f"sampling steps must be 1 to 150, got {self.steps}")
        if not 1 <= self.clip_skip <= 12:
            raise ValueError(f"clip skip must be 1 to 12, got {self.clip_skip}")
        if not 1 <= self.batch_size <= 64:
            raise ValueError(f"sample batch size must be 1 to 64, got {self.batch_size}")
        if not 0.0 <= self.guidance <= 30.0:
            raise ValueError(f"guidance must be 0 to 30, got {self.guidance}")
        width, height = self.size
        if width % 8 or height % 8 or not (64 <= width <= 2048 and 64 <= height <= 2048):
            raise ValueError(f"sample size must be 64–2048 px and a multiple of 8 each way, got {width}×{height}")


@dataclass(frozen=True)
class Sample:
    label: str          # the LoRA file's label (epoch name)
    weight: float
    prompt: str
    seed: int
    is_control: bool
    image: Image.Image


def _weight_label(weight: float) -> str:
    return "0 (base)" if weight == 0 else f"{weight:g}"


class SampleRenderer:
    """Holds one base pipeline and renders sweeps of LoRA files through it.

    Not thread-safe: one render at a time (the worker process runs one job at a time anyway)."""

    def __init__(self, info: BaseModelInfo, *, device: str | None = None, dtype: Any = None,
                 config: str | Path | None = None, cache_dir: str = "") -> None:
        self.info = info
        self.device = str(device or preferred_device())
        self.pipeline = load_inference_pipeline(info, device=self.device, dtype=dtype, config=config,
                                                cache_dir=cache_dir)
        self._adapter_counter = 0

    def _images(self, spec: SampleSpec, cases: Sequence[tuple[str, int]]) -> list[Image.Image]:
        """One image per (prompt, seed), drawn `spec.batch_size` at a time."""
        import torch

        width, height = spec.size
        images: list[Image.Image] = []
        for start in range(0, len(cases), spec.batch_size):
            batch = cases[start:start + spec.batch_size]
            try:
                pixels = draw(self.pipeline, self._prompts(spec, [prompt for prompt, _ in batch]),
                              [seed for _, seed in batch], device=self.device, steps=spec.steps,
                              guidance=spec.guidance, width=width, height=height)
            except torch.cuda.OutOfMemoryError:
                raise OutOfMemory(f"the GPU ran out of memory drawing {len(batch)} samples of {width}×{height} "
                                   f"at once: lower [samples] batch_size (now {spec.batch_size})") from None
            images += [to_image(p) for p in pixels]
        return images

    def _prompts(self, spec: SampleSpec, prompts: list[str]) -> dict[str, Any]:
        """The pipeline's prompt arguments, one row per prompt. With clip skip on SD 1.x the embeddings are
        made here, the way the trainer makes them: diffusers' own clip_skip path breaks under transformers 5."""
        negative = spec.negative_prompt or None
        if spec.clip_skip <= 1 or self.info.family != "sd15":
            return {"prompt": prompts, "negative_prompt": [negative] * len(prompts) if negative else None}
        import torch

        from engine.training.conditioning import SD15Conditioning

        text = SD15Conditioning(self.pipeline, clip_skip=spec.clip_skip, device=self.device, cache=False)
        dtype = self.pipeline.unet.dtype
        with torch.no_grad():
            return {"prompt_embeds": text.encode(prompts).hidden.to(dtype),
                    "negative_prompt_embeds": text.encode([negative or ""] * len(prompts)).hidden.to(dtype)}

    def _unload(self) -> None:
        self.pipeline.unload_lora_weights()

    def render(self, lora_files: Mapping[str, Path], spec: SampleSpec) -> list[Sample]:
        """Every (label, weight, prompt, seed) cell: labels in the order given, then weights, prompts, seeds.
        Weight-0 cells share one base-model image per (prompt, seed)."""
        spec.check()
        if not lora_files:
            raise ValueError("no LoRA files to sample")
        for label, path in lora_files.items():
            if not Path(path).is_file():
                raise FileNotFoundError(f"LoRA file for {label!r} not found: {path}")
        cases = [(prompt, is_control, seed) for prompt, is_control in spec.all_prompts() for seed in spec.seeds]
        weights = [float(w) for w in spec.weights]
        self._unload()  # start from the base model even if someone left a LoRA in
        base: dict[tuple[str, int], Image.Image] = {}
        if 0.0 in weights:
            base = dict(zip([(prompt, seed) for prompt, _, seed in cases],
                            self._images(spec, [(prompt, seed) for prompt, _, seed in cases]), strict=True))
        samples: list[Sample] = []
        for label, path in lora_files.items():
            self._adapter_counter += 1
            adapter = f"sample_{self._adapter_counter}"
            try:
                try:
                    self.pipeline.load_lora_weights(str(path), adapter_name=adapter)
                except (ValueError, KeyError, RuntimeError, OSError) as exc:
                    raise ValueError(f"LoRA file {label!r} ({Path(path).name}) could not be loaded into the "
                                     f"{self.info.family} base model: {exc}") from exc
                for weight in weights:
                    if weight == 0.0:
                        samples += [Sample(label, 0.0, prompt, seed, is_control, base[(prompt, seed)])
                                    for prompt, is_control, seed in cases]
                        continue
                    # Absolute scale = weight · alpha / rank, in the UNet and the text encoder(s) alike.
                    self.pipeline.set_adapters([adapter], adapter_weights=[weight])
                    images = self._images(spec, [(prompt, seed) for prompt, _, seed in cases])
                    samples += [Sample(label, weight, prompt, seed, is_control, image)
                                for (prompt, is_control, seed), image in zip(cases, images, strict=True)]
            finally:
                self._unload()
        return samples


def grids(samples: Sequence[Sample], *, title: str, max_bytes: int, cell: int = 256) -> list[GridImage]:
    """One grid per prompt (in the order the samples name them): rows = labels (× seed when there are
    several seeds), columns = weights ascending. A grid too big for `max_bytes` comes back split into
    several images by encode_for_discord, so the list may hold more images than prompts; each image's
    title names its prompt."""
    if not samples:
        raise ValueError("no samples to lay out")
    prompts: dict[str, bool] = {}
    labels: dict[str, None] = {}
    seeds: dict[int, None] = {}
    for s in samples:
        prompts.setdefault(s.prompt, s.is_control)
        labels.setdefault(s.label, None)
        seeds.setdefault(s.seed, None)
    weights = sorted({float(s.weight) for s in samples})
    by_key = {(s.prompt, s.label, s.seed, float(s.weight)): s.image for s in samples}
    out: list[GridImage] = []
    for prompt, is_control in prompts.items():
        rows = [(label, seed) for label in labels for seed in seeds]
        cells, row_labels = [], []
        for label, seed in rows:
            try:
                cells.append([by_key[(prompt, label, seed, w)] for w in weights])
            except KeyError as exc:
                raise ValueError(f"missing sample for prompt {prompt!r}, {label}, seed {seed}: "
                                 f"weight {exc.args[0][3]:g}") from None
            row_labels.append(label if len(seeds) == 1 else f"{label} seed {seed}")
        kind = "control, no trigger" if is_control else "trigger"
        out += encode_for_discord(cells, row_labels=row_labels, col_labels=[_weight_label(w) for w in weights],
                                  title=f"{title}: {prompt} ({kind})", max_bytes=max_bytes, cell=cell)
    return out


def file_grid(samples: Sequence[Sample], label: str, *, title: str, max_bytes: int,
              cell: int = 256) -> list[GridImage]:
    """One LoRA file's samples on their own (an epoch, or the recommended epoch on another base model):
    rows = prompts (× seed when there are several seeds), columns = weights ascending."""
    mine = [s for s in samples if s.label == label]
    if not mine:
        raise ValueError(f"no samples for {label!r}")
    weights = sorted({float(s.weight) for s in mine})
    by_key = {(s.prompt, s.seed, float(s.weight)): s.image for s in mine}
    rows = list(dict.fromkeys((s.prompt, s.seed, s.is_control) for s in mine))
    several_seeds = len({seed for _, seed, _ in rows}) > 1
    cells, row_labels = [], []
    for prompt, seed, is_control in rows:
        try:
            cells.append([by_key[(prompt, seed, w)] for w in weights])
        except KeyError as exc:
            raise ValueError(f"missing sample for prompt {prompt!r}, seed {seed}: weight {exc.args[0][2]:g}") from None
        row_labels.append(("(no trigger) " if is_control else "") + prompt
                          + (f" · seed {seed}" if several_seeds else ""))
    return encode_for_discord(cells, row_labels=row_labels, col_labels=[_weight_label(w) for w in weights],
                              title=title, max_bytes=max_bytes, cell=cell)
