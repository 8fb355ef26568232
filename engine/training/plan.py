"""The step plan of a training run, told to the member before it starts: how many steps, why, how long.

sd-scripts' arithmetic: an epoch shows every training picture `repeats` times. Regularization pictures
are balanced round-robin to that same number (cycled when there are fewer, only the first ones used when
there are more), so with any reg pictures an epoch is twice as long. Steps per epoch are the pictures of
an epoch over the batch size, rounded up (bucketing by aspect ratio can add a few: "about").
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from engine.errors import Invalid
from engine.training import memory
from engine.training.options import TrainOptions, group_learning_rates

RULE_OF_THUMB = (200, 400)  # training pictures × repeats per epoch that kohya-colab recommends


@dataclass(frozen=True)
class TrainPlan:
    images: int                  # training pictures
    reg_images: int              # regularization pictures available
    repeats: int
    epochs: int
    batch_size: int
    images_per_epoch: int        # training pictures shown per epoch: images × repeats
    reg_per_epoch: int           # regularization pictures shown per epoch (0 or images_per_epoch)
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    reg_doubling: bool
    estimated_seconds: float | None
    gpu_memory_gb: float         # during the steps, for a base model of the family's usual size (memory.py)
    lora_modules: int            # the LoRA's modules and parameters, on a base model of that size
    lora_parameters: int
    explanation: tuple[str, ...]  # sentences for the member, in order


def make_plan(options: TrainOptions, *, train_images: int, reg_images: int = 0,
              seconds_per_step: float | None = None, speed_source: str = "") -> TrainPlan:
    """`speed_source` says where `seconds_per_step` comes from (a measurement, a guess), for the member."""
    if train_images < 1:
        raise Invalid("there are no training pictures: add some before training")
    if reg_images < 0:
        raise Invalid(f"the number of regularization pictures cannot be negative, got {reg_images}")
    if seconds_per_step is not None and not (math.isfinite(seconds_per_step) and seconds_per_step > 0):
        raise Invalid(f"seconds per step must be a positive number, got {seconds_per_step}")
    repeats, epochs, batch = options.repeats, options.epochs, options.batch_size
    per_epoch = train_images * repeats
    doubling = reg_images > 0
    reg_per_epoch = per_epoch if doubling else 0
    steps_per_epoch = math.ceil((per_epoch + reg_per_epoch) / batch)
    total = steps_per_epoch * epochs
    estimate = None if seconds_per_step is None else total * seconds_per_step

    lines = [f"{_n(train_images)} picture{_s(train_images)} × {repeats} repeat{_s(repeats)} = {_n(per_epoch)} "
             f"picture{_s(per_epoch)} per epoch."]
    if doubling:
        if reg_images < per_epoch:
            how = f"cycled round to {_n(per_epoch)}"
        elif reg_images > per_epoch:
            how = f"only the first {_n(per_epoch)} of them are used"
        else:
            how = "one for each training picture"
        lines.append(f"With {_n(reg_images)} regularization picture{_s(reg_images)} each epoch also shows "
                     f"{_n(per_epoch)} class pictures ({how}), so an epoch is about twice as long.")
    lines.append(f"With batch size {batch} that is {_n(steps_per_epoch)} step{_s(steps_per_epoch)} per epoch "
                 f"× {epochs} epoch{_s(epochs)} = {_n(total)} step{_s(total)}.")
    if estimate is not None:
        source = f" ({speed_source})" if speed_source else ""
        lines.append(f"At about {seconds_per_step:.2g} s per step{source} that takes about {_duration(estimate)}.")
    lines.append(_network_line(options))
    lines.append(memory.describe(options))
    if options.optimizer == "prodigy":
        unet_lr, _ = group_learning_rates(options)
        trained = "the UNet and the text encoder" if options.train_text_encoder else "the UNet"
        lines.append(f"Prodigy finds its own step size: it runs at learning rate {unet_lr:g} for {trained} "
                     "(unet_lr and text_encoder_lr do not apply).")
    low, high = RULE_OF_THUMB
    if not low <= per_epoch <= high:
        better = max(1, round((low + high) / 2 / train_images))
        hint = f" (repeats {better} would give {_n(train_images * better)})" if better != repeats else ""
        lines.append(f"Rule of thumb: pictures × repeats around {low}–{high} per epoch works best; here it is "
                     f"{_n(per_epoch)}{hint}.")
    return TrainPlan(
        images=train_images, reg_images=reg_images, repeats=repeats, epochs=epochs, batch_size=batch,
        images_per_epoch=per_epoch, reg_per_epoch=reg_per_epoch, steps_per_epoch=steps_per_epoch,
        total_steps=total, warmup_steps=math.ceil(total * options.warmup_ratio), reg_doubling=doubling,
        estimated_seconds=estimate, gpu_memory_gb=round(memory.estimate(options).total_gib, 1),
        lora_modules=memory.lora_size(options).modules, lora_parameters=memory.lora_size(options).parameters,
        explanation=tuple(lines),
    )


def _network_line(options: TrainOptions) -> str:
    size = memory.lora_size(options)
    kind = memory.network_kind(options)
    what = {"attention": "the attention layers only", "kohya": "kohya's module set",
            "locon": f"kohya's module set + LoCon, conv_dim {options.conv_dim} / alpha {options.conv_alpha:g}"}[kind]
    where = "U-Net and text encoder" if options.train_text_encoder else "U-Net"
    family = {"sd15": "SD 1.5", "sdxl": "SDXL"}[options.family]
    return (f"LoRA: {_n(size.modules)} modules, {size.parameters / 1e6:.1f} M parameters ({what} in the {where}, "
            f"dim {options.network_dim} / alpha {options.network_alpha:g}, for an {family}-sized base model).")


def refuse_if_too_long(plan: TrainPlan, cap: int) -> None:
    """Invalid when the plan needs more steps than the server allows, with the epochs that would fit."""
    if plan.total_steps <= cap:
        return
    message = f"this would be {_n(plan.total_steps)} steps; the server allows {_n(cap)}: lower repeats or epochs"
    fitting = cap // plan.steps_per_epoch
    if fitting >= 1:
        message += f" (e.g. epochs {fitting} gives {_n(fitting * plan.steps_per_epoch)} steps)"
    raise Invalid(message)


def _n(number: int) -> str:
    return f"{number:,}"


def _s(number: int) -> str:
    return "" if number == 1 else "s"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"
