"""A run's files in `<project>/output/`: the epoch files, the final file, the state to resume from
(`state/state.pt`: LoRA weights, optimizer, LR schedule, epoch, step, RNG) and when a saved state belongs to
the run asking for it; the previous run's files moved aside when a new one starts."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from engine.errors import Invalid
from engine.training import data
from engine.training.kohya_format import kohya_metadata, options_metadata, save_kohya_lora
from engine.training.lora_files import epoch_file_name, keep_last, move_previous_run
from engine.training.lora_modules import Network
from engine.training.optimizers import optimizer_description
from engine.training.options import LEGACY
from engine.training.parts import Models, Pictures, Position
from engine.training.spec import TrainSpec, output_dir, say

STATE_FILE = "state.pt"
STATE_VERSION = 2
# Where each text encoder's LoRA weights are kept in state.pt ("te_lora" alone for SD 1.x, as before SDXL).
TE_STATE_KEYS = ("te_lora", "te2_lora")


def _lora_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if ".lora_" in n}


def _load_lora_params(model: torch.nn.Module, saved: Mapping[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in params if ".lora_" in n and n not in saved]
    if missing:
        raise Invalid(f"the saved training state does not match this LoRA ({missing[0]} missing): "
                      "start the training again without resume")
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value.to(params[name].device))


def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _saved_state(spec: TrainSpec, path: Path, run_key: Mapping[str, Any]) -> dict[str, Any] | None:
    """The state of an interrupted run to resume, or None to start at epoch 1. A state made with other
    settings, pictures or base model (an earlier, different training of this project) is not resumable:
    the training job always asks to resume, so a member starting a new training gets a fresh one."""
    if not spec.resume:
        return None
    if not path.is_file():
        say(spec, "no saved training state to resume from: starting at epoch 1")
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved_optimizer, optimizer = state.get("optimizer_class"), run_key["optimizer_class"]
    same_run = state.get("fingerprint") == run_key["fingerprint"]
    if saved_optimizer is not None and saved_optimizer != optimizer and same_run:
        # Same options, other optimizer: 8-bit AdamW saved on a GPU with bitsandbytes, plain AdamW here
        # (or the reverse). Their states do not load into each other.
        say(spec, f"the saved training state was made with {saved_optimizer}, and this machine trains with "
                   f"{optimizer}: their states do not mix, so starting at epoch 1")
        return None
    if any(state.get(key, "sd15" if key == "family" else None) != value for key, value in run_key.items()):
        say(spec, "the saved training state is from a training with other settings, pictures or base model: "
                   "starting at epoch 1")
        return None
    return state


# Options that change how a run is computed, not what it learns: a retry may change them (a smaller batch
# after running out of memory) and still resume after the epochs that were finished.
_NOT_LEARNED = ("batch_size", "gradient_checkpointing", "mixed_precision", "save_every_n_epochs", "keep_last_n",
                "max_train_steps_cap")


# Options added after states were first saved, at the values that mean what lorabake did without them: left
# out of the fingerprint, so a state saved before them (an attention-only network) still resumes.
_ADDED_LATER = {**LEGACY, "conv_dim": 0, "conv_alpha": 1.0}


def _fingerprint(spec: TrainSpec, prediction: str, train_items: list[data.Item],
                 reg_items: list[data.Item]) -> str:
    """What makes two runs the same run: the options that change what is learned, base model, trigger,
    picture names and captions."""
    learned = {k: v for k, v in spec.options.to_dict().items()
               if k not in _NOT_LEARNED and _ADDED_LATER.get(k, _NOT_LEARNED) != v}
    what = {"options": learned, "base_model": spec.base_model, "prediction": prediction,
            "trigger": spec.trigger, "train": [(i.path.name, i.caption) for i in train_items],
            "reg": [(i.path.name, i.caption) for i in reg_items]}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def _tag_frequency(spec: TrainSpec, train_items: list[data.Item],
                   reg_items: list[data.Item]) -> dict[str, dict[str, int]]:
    """Tag counts per dataset folder, as sd-scripts writes ss_tag_frequency: the training folder and, with reg
    pictures, the reg folder (kohya's names: "<repeats>_<trigger>", "1_<class>")."""
    def counts(items: list[data.Item]) -> dict[str, int]:
        found: dict[str, int] = {}
        for item in items:
            for tag in {t.strip() for t in item.caption.split(",") if t.strip()}:
                found[tag] = found.get(tag, 0) + 1
        return found

    folders = {f"{spec.options.repeats}_{spec.name}": counts(train_items)}
    if reg_items:
        folders[f"1_{spec.class_name.strip() or 'reg'}"] = counts(reg_items)
    return folders


class Checkpoints:
    """A run's files in `<project>/output/`: each saved epoch (kohya file + the state to resume from), the
    final file, and the previous run's files moved aside when this one starts afresh."""

    def __init__(self, spec: TrainSpec, models: Models, pictures: Pictures, optimizer: torch.optim.Optimizer,
                 lr_scheduler: Any, scaler: torch.amp.GradScaler, noise_gen: torch.Generator,
                 steps_per_epoch: int) -> None:
        self.spec, self.models, self.pictures = spec, models, pictures
        self.optimizer, self.lr_scheduler, self.scaler, self.noise_gen = optimizer, lr_scheduler, scaler, noise_gen
        self.steps_per_epoch, self.total_steps = steps_per_epoch, steps_per_epoch * spec.options.epochs
        self.out_dir = output_dir(spec.project_dir)
        self.state_path = self.out_dir / "state" / STATE_FILE
        self.run_key = {"version": STATE_VERSION, "network_dim": spec.options.network_dim,
                        "train_text_encoder": spec.options.train_text_encoder, "family": models.info.family,
                        "fingerprint": _fingerprint(spec, models.info.prediction, pictures.train, pictures.reg),
                        "optimizer_class": type(optimizer).__name__}
        self.tag_frequency = spec.tag_frequency or _tag_frequency(spec, pictures.train, pictures.reg)
        self.started_at = time.time()

    def restore_or_start(self) -> Position:
        """The saved state of an interrupted run of the same training, loaded; else a fresh start."""
        spec, opts = self.spec, self.spec.options
        state = _saved_state(spec, self.state_path, self.run_key)
        if state is None:
            # A fresh run's files must not mix with the last run's (keep_last, which keeps the highest
            # numbers, could delete this run's in favour of them); the last run's were handed out, so
            # they move aside.
            moved = move_previous_run(self.out_dir, spec.name)
            for old, new in moved:
                if spec.on_file_moved is not None:
                    spec.on_file_moved(old, new)
            if moved:
                where = moved[0][1].parent.relative_to(spec.project_dir).as_posix()
                say(spec, f"the previous training's {len(moved)} files were moved to {where}/ (links to them "
                           "keep working)")
            self.state_path.unlink(missing_ok=True)
            return Position()
        _load_lora_params(self.models.unet, state["unet_lora"])
        if opts.train_text_encoder:
            for encoder, key in zip(self.models.text.encoders, TE_STATE_KEYS, strict=False):
                _load_lora_params(encoder, state[key])
        self.optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.noise_gen.set_state(state["noise_rng"])
        torch.set_rng_state(state["torch_rng"])
        position = Position(state["epoch"], state["global_step"], state["ema_loss"])
        if state.get("steps_per_epoch") == self.steps_per_epoch:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        else:   # another batch size: the same epochs are done, in this run's steps
            position.step = state["epoch"] * self.steps_per_epoch
            with warnings.catch_warnings():   # "step() before optimizer.step()": on purpose, to catch up
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(position.step):
                    self.lr_scheduler.step()
            say(spec, f"the batch size changed since the saved state: epoch {state['epoch']} ends at step "
                       f"{position.step} of this run's {self.total_steps}")
        say(spec, f"resuming after epoch {state['epoch']} (step {position.step} of {self.total_steps})")
        return position

    def save_epoch(self, position: Position) -> Path:
        spec, opts = self.spec, self.spec.options
        path = save_kohya_lora(self.out_dir / epoch_file_name(spec.name, position.epoch),
                               self.models.kohya_state(opts), self._metadata(position))
        keep_last(self.out_dir, spec.name, opts.keep_last_n)
        state = {
            **self.run_key, "epoch": position.epoch, "global_step": position.step,
            "steps_per_epoch": self.steps_per_epoch, "unet_lora": _lora_params(self.models.unet),
            **{key: _lora_params(encoder) if opts.train_text_encoder else {}
               for encoder, key in zip(self.models.text.encoders, TE_STATE_KEYS, strict=False)},
            "optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict(),
            "noise_rng": self.noise_gen.get_state(), "torch_rng": torch.get_rng_state(),
            "ema_loss": position.ema_loss,
            "options": {k: v for k, v in opts.to_dict().items() if isinstance(v, (int, float, str, bool))},
        }
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        _atomic_torch_save(state, self.state_path)
        if spec.on_epoch_saved is not None:
            spec.on_epoch_saved(path)
        return path

    def save_final(self, position: Position) -> Path:
        """`<name>.safetensors`; the state is deleted, so the next training of the project starts afresh."""
        final = save_kohya_lora(self.out_dir / f"{self.spec.name}.safetensors",
                                self.models.kohya_state(self.spec.options), self._metadata(position))
        self.state_path.unlink(missing_ok=True)
        return final

    def _metadata(self, position: Position) -> dict[str, str]:
        opts, models = self.spec.options, self.models
        return kohya_metadata(
            base_model=self.spec.base_model, family=models.info.family, network=Network.of(opts),
            unet_lr=models.unet_lr,
            text_encoder_lr=models.te_lr if opts.train_text_encoder else None, epochs=opts.epochs,
            epoch=position.epoch, steps=position.step, resolution=opts.resolution, tag_frequency=self.tag_frequency,
            training_started_at=self.started_at, output_name=self.spec.name,
            extra=options_metadata(opts, prediction=models.info.prediction,
                                   optimizer=optimizer_description(opts, self.optimizer),
                                   train_images=len(self.pictures.train), reg_images=len(self.pictures.reg),
                                   total_steps=self.total_steps))
