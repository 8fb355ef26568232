"""What a training run is given and gives back: its spec, its progress events, its result, and the two
failures a member can act on. Shared by the trainer and the modules it is made of."""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import UserError
from engine.jobs.context import JobFailed
from engine.models.inference import preferred_device
from engine.training import data
from engine.training.captions import with_trigger
from engine.training.options import TrainOptions

log = logging.getLogger(__name__)


class TrainingDiverged(JobFailed, UserError):
    """The loss became NaN/inf: the LoRA is ruined from that step on."""


class TrainingOOM(JobFailed, UserError):
    """CUDA ran out of memory."""


@dataclass(frozen=True)
class Progress:
    epoch: int
    step: int            # global step, 1-based
    total_steps: int
    loss: float          # EMA-smoothed
    lr: float            # the UNet learning rate now
    it_s: float          # steps per second in this run
    eta_s: float
    resumed_from_epoch: int = 0   # this run went on after that saved epoch (0: from the start)


@dataclass(frozen=True)
class TrainSpec:
    project_dir: Path
    name: str
    base_model: str
    options: TrainOptions
    prediction: str | None = None             # force "epsilon" / "v_prediction"; None = what the model says
    trigger: str = ""
    class_name: str = ""                      # what reg pictures are trained on (options.reg_captions)
    device: str = field(default_factory=preferred_device)
    resume: bool = False
    tag_frequency: Mapping[str, Mapping[str, int]] | None = None
    log: Callable[[str], None] | None = None   # lines for the member (e.g. "8-bit AdamW unavailable")
    # Called with each epoch file as soon as it is saved, so a run that is cancelled or fails later still
    # hands out the epochs it finished.
    on_epoch_saved: Callable[[Path], None] | None = None
    # Called with (old, new) for each file of the previous run moved aside when a fresh run starts.
    on_file_moved: Callable[[Path, Path], None] | None = None


@dataclass(frozen=True)
class TrainResult:
    final_path: Path
    epoch_paths: tuple[Path, ...]     # per-epoch files still on disk
    total_steps: int
    steps_per_epoch: int
    final_loss: float                 # EMA-smoothed
    steps_per_second: float
    resumed_from_epoch: int           # 0 for a fresh run
    latent_cache_hits: int
    latent_cache_misses: int
    text_cache_hits: int
    freed_before_step_1: tuple[str, ...]   # the modules whose memory was given back once caching was done


def output_dir(project_dir: Path) -> Path:
    return Path(project_dir) / "output"


def say(spec: TrainSpec, message: str) -> None:
    log.info(message)
    if spec.log is not None:
        spec.log(message)


def trained_caption(spec: TrainSpec, sample: data.Sample) -> str:
    """What a sample is trained on, before shuffling. Reg pictures teach what the class looks like without
    the character: with the trigger on them, it would mean any of the class."""
    return sample.item.caption if sample.is_reg else with_trigger(sample.item.caption, spec.trigger)
