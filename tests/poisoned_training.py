"""A "train" job kind whose loss turns NaN at a chosen step, for the NaN path through Discord.

Plugged in with LORABAKE_JOB_PLUGINS=tests.jobkinds,tests.poisoned_training. The fault is injected into
torch (mse_loss), not into our trainer: everything from the loss check onwards is the real code."""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F

from engine.jobs import JobKind
from engine.jobs import train as real_train
from engine.jobs.context import JobContext

POISON_AT_STEP = 3

JOB_KINDS = [JobKind("train", "Training", "gpu", "tests.poisoned_training:run")]


def run(ctx: JobContext) -> dict[str, Any]:
    real_mse = F.mse_loss
    calls = 0

    def poisoned(*args: Any, **kwargs: Any):
        nonlocal calls
        calls += 1
        loss = real_mse(*args, **kwargs)
        return loss * float("nan") if calls >= POISON_AT_STEP else loss

    F.mse_loss = poisoned
    try:
        return real_train.run(ctx)
    finally:
        F.mse_loss = real_mse
