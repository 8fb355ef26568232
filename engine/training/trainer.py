"""Train a LoRA on a Stable Diffusion 1.x or SDXL base model, the way kohya sd-scripts does (DESIGN §3).

`train(spec, report)` loads the pipeline once, freezes it, injects LoRA (UNet, and the text encoder(s)
when `train_text_encoder`), and runs epochs of bucketed batches: DDPM noise from the base model's scheduler
config, epsilon or v-prediction targets, min-SNR-γ weighting, noise offset, multires noise, per-sample
prior-loss weight for regularization pictures, autocast on CUDA only (LoRA parameters stay fp32, the VAE
fp32). What the UNet is conditioned on per family (clip skip; SDXL's two encoders, pooled embedding and
size/crop time ids) lives in conditioning.py.

Files, in `<project>/output/`: `<name>-NN.safetensors` every `save_every_n_epochs` epochs (kohya keys, real
alpha, ss_* metadata), the newest `keep_last_n` kept, `state/state.pt` (LoRA weights, optimizer, lr
scheduler, epoch, step, RNG) to resume from, and `<name>.safetensors` (the last epoch) at the end.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from engine.errors import Invalid, UserError
from engine.jobs.context import JobFailed
from engine.models.base import BaseModelInfo, load_pipeline, resolve_base_model
from engine.models.inference import preferred_device
from engine.training import data
from engine.training.captions import with_trigger
from engine.training.conditioning import TextConditioning, for_family
from engine.training.faults import divergence_message, is_out_of_memory, out_of_memory_message, training_precision
from engine.training.kohya_format import kohya_metadata, options_metadata, save_kohya_lora, to_kohya_state_dict
from engine.training.lora_files import epoch_file_name, keep_last, move_previous_run
from engine.training.lora_inject import add_text_encoder_lora, add_unet_lora, lora_state_dict
from engine.training.optimizers import make_lr_scheduler, make_optimizer, optimizer_description, optimizer_step
from engine.training.options import TrainOptions, group_learning_rates

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
STATE_VERSION = 2
# Non-finite steps skipped in a row before the run counts as diverged: one can be a bad batch, several in a
# row mean the LoRA itself went bad.
MAX_BAD_STEPS_IN_A_ROW = 3
EMA_DECAY = 0.9
# Where each text encoder's LoRA weights are kept in state.pt ("te_lora" alone for SD 1.x, as before SDXL).
_TE_STATE_KEYS = ("te_lora", "te2_lora")


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


def _say(spec: TrainSpec, message: str) -> None:
    log.info(message)
    if spec.log is not None:
        spec.log(message)


# --- pieces -----------------------------------------------------------------------------------------


def multires_noise(noise: torch.Tensor, iterations: int, discount: float, gen: torch.Generator) -> torch.Tensor:
    """sd-scripts' pyramid noise: upsampled coarser noise added with falling weight, renormalised."""
    b, c, h, w = noise.shape
    for i in range(iterations):
        r = float(torch.rand((), generator=gen)) * 2 + 2
        hn, wn = max(1, int(h / (r ** i))), max(1, int(w / (r ** i)))
        coarse = torch.randn(b, c, hn, wn, generator=gen)
        noise = noise + F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False) * discount ** i
        if hn == 1 or wn == 1:
            break
    return noise / noise.std()


def min_snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float,
                    prediction: str) -> torch.Tensor:
    snr = alphas_cumprod[timesteps] / (1 - alphas_cumprod[timesteps])
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if prediction == "v_prediction" else clipped / snr


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
        _say(spec, "no saved training state to resume from: starting at epoch 1")
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved_optimizer, optimizer = state.get("optimizer_class"), run_key["optimizer_class"]
    same_run = state.get("fingerprint") == run_key["fingerprint"]
    if saved_optimizer is not None and saved_optimizer != optimizer and same_run:
        # Same options, other optimizer: 8-bit AdamW saved on a GPU with bitsandbytes, plain AdamW here
        # (or the reverse). Their states do not load into each other.
        _say(spec, f"the saved training state was made with {saved_optimizer}, and this machine trains with "
                   f"{optimizer}: their states do not mix, so starting at epoch 1")
        return None
    if any(state.get(key, "sd15" if key == "family" else None) != value for key, value in run_key.items()):
        _say(spec, "the saved training state is from a training with other settings, pictures or base model: "
                   "starting at epoch 1")
        return None
    return state


# Options that change how a run is computed, not what it learns: a retry may change them (a smaller batch
# after running out of memory) and still resume after the epochs that were finished.
_NOT_LEARNED = ("batch_size", "gradient_checkpointing", "mixed_precision", "save_every_n_epochs", "keep_last_n",
                "max_train_steps_cap")


def _fingerprint(spec: TrainSpec, prediction: str, train_items: list[data.Item],
                 reg_items: list[data.Item]) -> str:
    """What makes two runs the same run: the options that change what is learned, base model, trigger,
    picture names and captions."""
    learned = {k: v for k, v in spec.options.to_dict().items() if k not in _NOT_LEARNED}
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


def _caption(spec: TrainSpec, sample: data.Sample) -> str:
    """What a sample is trained on, before shuffling. Reg pictures teach what the class looks like without
    the character: with the trigger on them, it would mean any of the class."""
    return sample.item.caption if sample.is_reg else with_trigger(sample.item.caption, spec.trigger)


def _free(modules: list[torch.nn.Module], on_cuda: bool) -> None:
    """Drops modules' weights (to the meta device): any later use fails loudly instead of holding memory."""
    for module in modules:
        module.to("meta")
    gc.collect()
    if on_cuda:
        torch.cuda.empty_cache()


# --- the run's parts ---------------------------------------------------------------------------------


@dataclass
class _Models:
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
        return to_kohya_state_dict(lora_state_dict(self.unet), te, family=self.info.family,
                                   rank=options.network_dim, alpha=options.network_alpha)


def _set_up_models(spec: TrainSpec, info: BaseModelInfo, precision: str) -> _Models:
    """Loads the pipeline in the training precision, freezes it, and injects LoRA into the UNet (and the text
    encoder(s) when they are trained); the VAE encodes in fp32 (fp16 VAEs, SDXL's above all, overflow)."""
    opts, device = spec.options, spec.device
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    weight_dtype = amp_dtype or torch.float32
    pipe = load_pipeline(info, dtype=weight_dtype, device=device)
    unet, vae = pipe.unet, pipe.vae
    # Embeddings are cached per caption only when they cannot change: encoders frozen, captions fixed.
    text = for_family(info.family, pipe, clip_skip=opts.clip_skip, device=device,
                      cache=not opts.train_text_encoder and not opts.shuffle_captions)
    if vae.dtype != torch.float32:
        vae.to(dtype=torch.float32)
    for module in (unet, vae, *text.encoders):
        module.requires_grad_(False)
    vae.eval()

    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config, prediction_type=info.prediction)
    unet_lr, te_lr = group_learning_rates(opts)
    groups = [{"params": add_unet_lora(unet, opts.network_dim, opts.network_alpha), "lr": unet_lr}]
    unet.train()
    if opts.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    te_params: list[torch.nn.Parameter] = []
    for encoder in text.encoders:
        encoder.train(opts.train_text_encoder)
        if opts.train_text_encoder:
            te_params += add_text_encoder_lora(encoder, opts.network_dim, opts.network_alpha)
            if opts.gradient_checkpointing:
                encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if te_params:
        groups.append({"params": te_params, "lr": te_lr})
    return _Models(info, pipe, unet, vae, text, weight_dtype, amp_dtype, noise_scheduler, unet_lr, te_lr, groups)


@dataclass(frozen=True)
class _Pictures:
    """The run's pictures with their captions, sizes and buckets (the same every epoch: only the order changes)."""
    train: list[data.Item]
    reg: list[data.Item]
    size_by_path: dict[Path, tuple[int, int]]
    bucket_by_path: dict[Path, data.Bucket]

    @classmethod
    def load(cls, spec: TrainSpec) -> _Pictures:
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
        return {_caption(spec, data.Sample(item, is_reg))
                for items, is_reg in ((self.train, False), (self.reg, True)) for item in items}


@dataclass
class _Position:
    """Where a run stands: the last finished epoch, the step, the smoothed loss."""
    epoch: int = 0
    step: int = 0
    ema_loss: float = float("nan")

    def advance(self, loss: float) -> None:
        self.step += 1
        if math.isfinite(loss):
            self.ema_loss = loss if math.isnan(self.ema_loss) else EMA_DECAY * self.ema_loss + (1 - EMA_DECAY) * loss


def _batch_loss(spec: TrainSpec, models: _Models, pictures: _Pictures, latents: data.LatentCache,
                batch: list[data.Sample], rng: random.Random, noise_gen: torch.Generator) -> torch.Tensor:
    """One batch's loss as sd-scripts computes it: the cached latents (flipped at random), DDPM noise (with
    offset / multires noise) at random timesteps, the UNet's prediction against the noise or velocity, per
    sample weighted by the prior-loss weight for reg pictures and min-SNR-γ."""
    opts, device, scheduler = spec.options, spec.device, models.noise_scheduler
    flips = [opts.flip_aug and rng.random() < 0.5 for _ in batch]
    captions = [_caption(spec, sample) for sample in batch]
    if opts.shuffle_captions:
        captions = [data.shuffle_caption(caption, opts.keep_tokens, rng) for caption in captions]
    placements = [data.Placement(pictures.size_by_path[s.item.path], pictures.bucket_of(s), flip)
                  for s, flip in zip(batch, flips, strict=True)]
    x0 = torch.stack([latents.latent(s.item.path, p.bucket, p.flip) for s, p in zip(batch, placements, strict=True)])

    noise = torch.randn(x0.shape, generator=noise_gen)
    if opts.noise_offset:
        noise = noise + opts.noise_offset * torch.randn(x0.shape[0], x0.shape[1], 1, 1, generator=noise_gen)
    if opts.multires_noise_iterations:
        noise = multires_noise(noise, opts.multires_noise_iterations, opts.multires_noise_discount, noise_gen)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=noise_gen)
    noisy = scheduler.add_noise(x0, noise, timesteps)
    prediction = models.info.prediction
    target = scheduler.get_velocity(x0, noise, timesteps) if prediction == "v_prediction" else noise
    weights = torch.tensor([opts.prior_loss_weight if s.is_reg else 1.0 for s in batch])
    if opts.min_snr_gamma > 0:
        alphas_cumprod = scheduler.alphas_cumprod.to(torch.float32)
        weights = weights * min_snr_weights(alphas_cumprod, timesteps, opts.min_snr_gamma, prediction)

    autocast = torch.autocast("cuda", dtype=models.amp_dtype) if models.amp_dtype else contextlib.nullcontext()
    with autocast:
        embedding = models.text.embed(captions, grad=opts.train_text_encoder)
        pred = models.unet(noisy.to(device, dtype=models.weight_dtype), timesteps.to(device),
                           **models.text.unet_kwargs(embedding, placements, models.weight_dtype)).sample
    per_sample = F.mse_loss(pred.float(), target.to(device), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weights.to(device)).mean()


class _Checkpoints:
    """A run's files in `<project>/output/`: each saved epoch (kohya file + the state to resume from), the
    final file, and the previous run's files moved aside when this one starts afresh."""

    def __init__(self, spec: TrainSpec, models: _Models, pictures: _Pictures, optimizer: torch.optim.Optimizer,
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

    def restore_or_start(self) -> _Position:
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
                _say(spec, f"the previous training's {len(moved)} files were moved to {where}/ (links to them "
                           "keep working)")
            self.state_path.unlink(missing_ok=True)
            return _Position()
        _load_lora_params(self.models.unet, state["unet_lora"])
        if opts.train_text_encoder:
            for encoder, key in zip(self.models.text.encoders, _TE_STATE_KEYS, strict=False):
                _load_lora_params(encoder, state[key])
        self.optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.noise_gen.set_state(state["noise_rng"])
        torch.set_rng_state(state["torch_rng"])
        position = _Position(state["epoch"], state["global_step"], state["ema_loss"])
        if state.get("steps_per_epoch") == self.steps_per_epoch:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        else:   # another batch size: the same epochs are done, in this run's steps
            position.step = state["epoch"] * self.steps_per_epoch
            with warnings.catch_warnings():   # "step() before optimizer.step()": on purpose, to catch up
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(position.step):
                    self.lr_scheduler.step()
            _say(spec, f"the batch size changed since the saved state: epoch {state['epoch']} ends at step "
                       f"{position.step} of this run's {self.total_steps}")
        _say(spec, f"resuming after epoch {state['epoch']} (step {position.step} of {self.total_steps})")
        return position

    def save_epoch(self, position: _Position) -> Path:
        spec, opts = self.spec, self.spec.options
        path = save_kohya_lora(self.out_dir / epoch_file_name(spec.name, position.epoch),
                               self.models.kohya_state(opts), self._metadata(position))
        keep_last(self.out_dir, spec.name, opts.keep_last_n)
        state = {
            **self.run_key, "epoch": position.epoch, "global_step": position.step,
            "steps_per_epoch": self.steps_per_epoch, "unet_lora": _lora_params(self.models.unet),
            **{key: _lora_params(encoder) if opts.train_text_encoder else {}
               for encoder, key in zip(self.models.text.encoders, _TE_STATE_KEYS, strict=False)},
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

    def save_final(self, position: _Position) -> Path:
        """`<name>.safetensors`; the state is deleted, so the next training of the project starts afresh."""
        final = save_kohya_lora(self.out_dir / f"{self.spec.name}.safetensors",
                                self.models.kohya_state(self.spec.options), self._metadata(position))
        self.state_path.unlink(missing_ok=True)
        return final

    def _metadata(self, position: _Position) -> dict[str, str]:
        opts, models = self.spec.options, self.models
        return kohya_metadata(
            base_model=self.spec.base_model, family=models.info.family, rank=opts.network_dim,
            alpha=opts.network_alpha, unet_lr=models.unet_lr,
            text_encoder_lr=models.te_lr if opts.train_text_encoder else None, epochs=opts.epochs,
            epoch=position.epoch, steps=position.step, resolution=opts.resolution, tag_frequency=self.tag_frequency,
            training_started_at=self.started_at, output_name=self.spec.name,
            extra=options_metadata(opts, prediction=models.info.prediction,
                                   optimizer=optimizer_description(opts, self.optimizer),
                                   train_images=len(self.pictures.train), reg_images=len(self.pictures.reg),
                                   total_steps=self.total_steps))


class _Speed:
    """Steps per second of this run (a resumed run counts from its own start) and the time left."""

    def __init__(self, total_steps: int, resumed_from: int) -> None:
        self.total_steps, self.resumed_from = total_steps, resumed_from
        self.started, self.steps = time.perf_counter(), 0

    @property
    def it_s(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.steps / elapsed if elapsed > 0 else 0.0

    def progress(self, position: _Position, epoch: int, lr: float) -> Progress:
        self.steps += 1
        it_s = self.it_s
        eta = (self.total_steps - position.step) / it_s if it_s > 0 else 0.0
        return Progress(epoch=epoch, step=position.step, total_steps=self.total_steps, loss=position.ema_loss,
                        lr=lr, it_s=it_s, eta_s=eta, resumed_from_epoch=self.resumed_from)


# --- the run ----------------------------------------------------------------------------------------


def train(spec: TrainSpec, report: Callable[[Progress], None]) -> TrainResult:
    try:
        return _train(spec, report)
    except RuntimeError as error:   # OutOfMemoryError is one
        if not is_out_of_memory(error):
            raise
    # Out of the except block, so its traceback (and the tensors its frames hold) is gone before freeing.
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    raise TrainingOOM(out_of_memory_message(spec.options))


def _train(spec: TrainSpec, report: Callable[[Progress], None]) -> TrainResult:
    opts, on_cuda = spec.options, spec.device.startswith("cuda")
    info = resolve_base_model(spec.base_model, prediction=spec.prediction)
    pictures = _Pictures.load(spec)

    # Set up: seeds, the precision this card runs, the models with LoRA, optimizer and schedule.
    random.seed(opts.seed)
    torch.manual_seed(opts.seed)
    precision, why = training_precision(
        opts.mixed_precision, spec.device, lambda: torch.cuda.is_bf16_supported(including_emulation=False))
    if why:
        _say(spec, why)
    if on_cuda:   # the parts kept in fp32 (LoRA weights, VAE) use TF32 matmuls, as sd-scripts allows
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    models = _set_up_models(spec, info, precision)
    optimizer = make_optimizer(opts, spec.device, models.groups, lambda line: _say(spec, line))
    steps_per_epoch = pictures.steps_per_epoch(opts)
    total_steps = steps_per_epoch * opts.epochs
    if total_steps > opts.max_train_steps_cap:
        raise Invalid(f"this would be {total_steps:,} steps; the server allows {opts.max_train_steps_cap:,}: "
                      "lower repeats or epochs")
    lr_scheduler = make_lr_scheduler(opts, optimizer, total_steps, math.ceil(total_steps * opts.warmup_ratio))
    scaler = torch.amp.GradScaler("cuda", enabled=models.amp_dtype == torch.float16)
    noise_gen = torch.Generator().manual_seed(opts.seed)

    # Restore an interrupted run of the same training, or start afresh.
    checkpoints = _Checkpoints(spec, models, pictures, optimizer, lr_scheduler, scaler, noise_gen, steps_per_epoch)
    position = checkpoints.restore_or_start()
    resumed_from = position.epoch

    # Every latent, and with frozen encoders every caption's embedding, is made before step 1, so the VAE
    # and those encoders leave memory for good: the steps need only the UNet, the LoRA and the optimizer
    # (as sd-scripts frees them, but dropped rather than parked on the CPU: nothing uses them again).
    latents = data.LatentCache(models.vae, spec.device, opts.seed)
    latents.fill(pictures.used_placements(opts))
    unused = {"vae": models.vae}
    if models.text.cache is not None:
        models.text.fill(pictures.fixed_captions(spec))
        unused |= {name: getattr(models.pipe, name) for name in ("text_encoder", "text_encoder_2")
                   if getattr(models.pipe, name, None) is not None}
    _free(list(unused.values()), on_cuda)

    speed = _Speed(total_steps, resumed_from)
    bad_steps: list[tuple[int, float]] = []   # (step, loss) of the skipped steps since the last good one
    for epoch in range(position.epoch + 1, opts.epochs + 1):
        # The epoch's order: shuffled with a seed of its own, batched one bucket per batch.
        rng = random.Random(data.epoch_seed(opts.seed, epoch) ^ 0x5EED)
        for batch in data.make_batches(pictures.epoch(opts, epoch), pictures.bucket_of, opts.batch_size, rng):
            # The batch's loss.
            loss = _batch_loss(spec, models, pictures, latents, batch, rng, noise_gen)
            value = float(loss.detach())
            # One optimizer step, skipped when the loss or the gradients are not finite; a few skipped in a
            # row end the run.
            if optimizer_step(loss, value, scaler=scaler, optimizer=optimizer, lr_scheduler=lr_scheduler,
                              trainable=models.trainable):
                bad_steps = []
            else:
                bad_steps.append((position.step + 1, value))
                if len(bad_steps) >= MAX_BAD_STEPS_IN_A_ROW:
                    raise TrainingDiverged(divergence_message(opts, spec.name, checkpoints.out_dir, bad_steps,
                                                              precision))
            optimizer.zero_grad(set_to_none=True)
            # Progress: step, smoothed loss, learning rate, speed, time left.
            position.advance(value)
            report(speed.progress(position, epoch, float(lr_scheduler.get_last_lr()[0])))
        position.epoch = epoch
        # The epoch's file and state, unless its last steps were skipped: if they start a divergence, that
        # file would be handed out as the last good epoch (the next one saved carries its training).
        if bad_steps:
            _say(spec, f"epoch {epoch} ended on {len(bad_steps)} skipped step(s): its file is not saved")
        elif epoch % opts.save_every_n_epochs == 0 or epoch == opts.epochs:
            checkpoints.save_epoch(position)

    final = checkpoints.save_final(position)
    return TrainResult(
        final_path=final,
        epoch_paths=tuple(sorted(checkpoints.out_dir.glob(f"{spec.name}-*.safetensors"))),
        total_steps=position.step, steps_per_epoch=steps_per_epoch, final_loss=position.ema_loss,
        steps_per_second=speed.it_s, resumed_from_epoch=resumed_from,
        latent_cache_hits=latents.hits, latent_cache_misses=latents.misses, text_cache_hits=models.text.cache_hits,
        freed_before_step_1=tuple(unused),
    )


__all__ = ["Progress", "TrainResult", "TrainSpec", "TrainingDiverged", "TrainingOOM", "output_dir", "train"]
