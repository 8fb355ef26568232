"""The optimizer and learning-rate schedule of a run, as kohya-colab sets them up."""
from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from typing import Any

import torch

from engine.training.options import TrainOptions


def prodigy_arguments(options: TrainOptions) -> dict[str, Any]:
    """kohya-colab's recommended Prodigy arguments (safeguard_warmup only matters with a warmup)."""
    return {"decouple": True, "weight_decay": 0.01, "betas": (0.9, 0.999), "d_coef": 2.0,
            "use_bias_correction": True, "safeguard_warmup": options.warmup_ratio > 0}


def make_optimizer(options: TrainOptions, device: str, groups: list[dict[str, Any]],
                   say: Callable[[str], None]) -> torch.optim.Optimizer:
    if options.optimizer == "prodigy":
        from prodigyopt import Prodigy

        return Prodigy(groups, **prodigy_arguments(options))
    if options.optimizer == "adamw8bit":
        if device.startswith("cuda") and importlib.util.find_spec("bitsandbytes") is not None:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(groups, weight_decay=0.01)
        why = "not on a CUDA GPU" if not device.startswith("cuda") else "bitsandbytes is not installed"
        say(f"8-bit AdamW is unavailable ({why}): using AdamW, which needs a little more memory")
    return torch.optim.AdamW(groups, weight_decay=0.01)


def optimizer_description(options: TrainOptions, optimizer: torch.optim.Optimizer) -> str:
    """As sd-scripts writes ss_optimizer: the class, then its arguments when there are any."""
    name = f"{type(optimizer).__module__}.{type(optimizer).__name__}"
    if options.optimizer == "prodigy":
        name += "(" + ",".join(f"{k}={v}" for k, v in prodigy_arguments(options).items()) + ")"
    return name


def make_lr_scheduler(options: TrainOptions, optimizer: torch.optim.Optimizer, total: int, warmup: int) -> Any:
    from diffusers.optimization import get_scheduler

    name = options.lr_scheduler
    if name == "constant" and warmup > 0:
        name = "constant_with_warmup"
    kwargs: dict[str, Any] = {}
    if name == "cosine_with_restarts":
        kwargs["num_cycles"] = options.lr_restarts
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total, **kwargs)


MAX_GRAD_NORM = 1.0   # sd-scripts' default


def optimizer_step(loss: torch.Tensor, value: float, *, scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer,
                   lr_scheduler: Any, trainable: list[torch.nn.Parameter]) -> bool:
    """One optimizer step for `loss` (whose float is `value`), unless the loss or (without a scaler, which
    skips those itself) the gradients are not finite: such a step is not applied, and False says so.
    The caller zeroes the gradients."""
    applied = math.isfinite(value)
    if applied:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM))
        applied = scaler.is_enabled() or math.isfinite(grad_norm)
    if not applied:
        return False
    scale_before = scaler.get_scale() if scaler.is_enabled() else 0.0
    scaler.step(optimizer)
    scaler.update()
    # The scaler skips a step whose gradients overflowed (and lowers its scale): the learning rate
    # schedule waits for a step that was taken, as accelerate does for sd-scripts.
    if not scaler.is_enabled() or scaler.get_scale() >= scale_before:
        lr_scheduler.step()
    return True
