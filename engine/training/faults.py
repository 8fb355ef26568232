"""When a training goes wrong, in words a member can act on: a loss that diverged, a GPU out of memory,
and the precision a card can really run."""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from engine.training.lora_files import epoch_files
from engine.training.options import TrainOptions


def divergence_message(opts: TrainOptions, name: str, out_dir: Path, bad_steps: list[tuple[int, float]],
                       precision: str) -> str:
    """What went wrong, from which step, and what to change for the precision this run actually used."""
    first, value = bad_steps[0]
    if math.isfinite(value):
        head = f"the gradients became NaN or infinite at step {first}"
    else:
        head = f"the loss became {'NaN' if math.isnan(value) else 'infinite'} at step {first}"
    kept = epoch_files(out_dir, name)   # none is saved during skipped steps: the newest is good
    last = f"; the file of the last good epoch ({kept[-1][1].name}) is kept" if kept else ""
    advice = (f"lower the learning rate (unet_lr {opts.unet_lr:g}, text_encoder_lr {opts.text_encoder_lr:g})"
              if opts.optimizer != "prodigy" else "use optimizer adamw with kohya's learning rates")
    if precision == "fp16":
        advice += ", or use mixed_precision bf16 (on a GPU that supports it) or no, instead of fp16"
    return f"{head}, and {len(bad_steps)} steps in a row were skipped: {advice}{last}"


def training_precision(requested: str, device: str, bf16_native: Callable[[], bool]) -> tuple[str, str | None]:
    """(the precision a run uses: "fp16", "bf16" or "no", a line for the member when it is not what was
    asked). Mixed precision is for CUDA only; bf16 only where the card computes it natively (emulated
    bf16 on older cards is slow), else fp16 with loss scaling, which every CUDA card has."""
    if not device.startswith("cuda") or requested == "no":
        return "no", None
    if requested == "bf16" and not bf16_native():
        return "fp16", ("this GPU has no native bf16: training in fp16 with loss scaling instead (if the loss "
                        "becomes NaN, use mixed_precision no)")
    return requested, None


# Allocation failures that torch raises as a plain RuntimeError rather than OutOfMemoryError.
_OOM_MARKERS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
                "CUDNN_STATUS_NOT_ENOUGH_WORKSPACE")


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and any(marker in str(error) for marker in _OOM_MARKERS))


def out_of_memory_message(options: TrainOptions) -> str:
    """What to lower, and checkpointing only when it is off."""
    fixes = [f"lower batch_size (now {options.batch_size}{', e.g. 1' if options.batch_size > 1 else ''})"]
    if not options.gradient_checkpointing:
        fixes.append("turn on gradient_checkpointing")
    fixes.append(f"or lower the resolution (now {options.resolution})")
    return (f"the GPU ran out of memory while training: {', '.join(fixes)}; the files of the finished epochs "
            "are kept, and a retry with a smaller batch resumes after the last of them")
