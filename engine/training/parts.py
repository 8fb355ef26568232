"""The parts a training run is made of: the models with LoRA injected, the pictures with their sizes and
buckets, and where the run stands (epoch, step, smoothed loss)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.errors import Invalid
from engine.models.base import BaseModelInfo
from engine.training import data
from engine.training.conditioning import TextConditioning
from engine.training.kohya_format import to_kohya_state_dict
from engine.training.lora_inject import lora_state_dict
from engine.training.lora_modules import Network, sgm_namer
from engine.training.options import TrainOptions
from engine.training.spec import TrainSpec, trained_caption

EMA_DECAY = 0.9


@dataclass
class Models:
    """The base pipeline's parts as a run uses them, frozen, with LoRA injected."""
    info: BaseModelInfo
    pipe: Any
    unet: torch.nn.Module
    vae: torch.nn.Module
    text: TextConditioning
    weight_dtype: torch.dtype           # of the frozen UNet / text encoders
    amp_dtype: torch.dtype | None       # autocast's, on CUDA with mixed precision
    noise_scheduler: Any                # DDPM, from the base model's scheduler config
    unet_lr: float
    te_lr: float
    groups: list[dict[str, Any]]        # the optimizer's parameter groups: UNet LoRA (and text encoder LoRA)

    @property
    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for group in self.groups for p in group["params"]]

    def kohya_state(self, options: TrainOptions) -> dict[str, torch.Tensor]:
        te = [lora_state_dict(encoder) for encoder in self.text.encoders] if options.train_text_encoder else []
        names = sgm_namer(self.unet) if self.info.family == "sdxl" else None
        return to_kohya_state_dict(lora_state_dict(self.unet), te, family=self.info.family,
                                   network=Network.of(options), unet_names=names)


@dataclass(frozen=True)
class Pictures:
    """The run's pictures with their captions, sizes and buckets (the same every epoch: only the order changes)."""
    train: list[data.Item]
    reg: list[data.Item]
    size_by_path: dict[Path, tuple[int, int]]
    bucket_by_path: dict[Path, data.Bucket]

    @classmethod
    def load(cls, spec: TrainSpec) -> Pictures:
        opts, project = spec.options, Path(spec.project_dir)
        train_items, reg_items = data.load_items(project / "dataset", project / "reg")
        if not train_items:
            raise Invalid("there are no training pictures in the dataset folder: add some before training")
        reg_items = data.as_reg_captions(reg_items, spec.class_name, opts.reg_captions)
        buckets = data.make_buckets(opts.resolution, opts.bucket_min, opts.bucket_max, opts.bucket_step)
        sizes = {item.path: data.image_size(item.path) for item in train_items + reg_items}
        return cls(train_items, reg_items, sizes,
                   {path: data.pick_bucket(size, buckets) for path, size in sizes.items()})

    def bucket_of(self, sample: data.Sample) -> data.Bucket:
        return self.bucket_by_path[sample.item.path]

    def epoch(self, options: TrainOptions, epoch: int) -> list[data.Sample]:
        """Each training picture `repeats` times and as many reg pictures, shuffled for this epoch."""
        return data.epoch_schedule(self.train, self.reg, options.repeats, options.seed, epoch)

    def steps_per_epoch(self, options: TrainOptions) -> int:
        return data.count_batches(self.epoch(options, 1), self.bucket_of, options.batch_size)

    def used_placements(self, options: TrainOptions) -> list[tuple[Path, data.Bucket, bool]]:
        """Every (picture, bucket, flip) a run can ask a latent for: the reg pictures the round-robin uses."""
        used = sorted({sample.item.path for sample in self.epoch(options, 1)})
        flips = (False, True) if options.flip_aug else (False,)
        return [(path, self.bucket_by_path[path], flip) for path in used for flip in flips]

    def fixed_captions(self, spec: TrainSpec) -> set[str]:
        return {trained_caption(spec, data.Sample(item, is_reg))
                for items, is_reg in ((self.train, False), (self.reg, True)) for item in items}


@dataclass
class Position:
    """Where a run stands: the last finished epoch, the step, the smoothed loss."""
    epoch: int = 0
    step: int = 0
    ema_loss: float = float("nan")

    def advance(self, loss: float) -> None:
        self.step += 1
        if math.isfinite(loss):
            self.ema_loss = loss if math.isnan(self.ema_loss) else EMA_DECAY * self.ema_loss + (1 - EMA_DECAY) * loss
