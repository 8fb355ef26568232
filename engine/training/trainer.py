"""Train a LoRA on a Stable Diffusion 1.x or SDXL base model, the way kohya sd-scripts does (DESIGN §3).

`train(spec, report)` loads the pipeline once, freezes it, injects LoRA (UNet, and the text encoder(s)
when `train_text_encoder`), and runs epochs of bucketed batches: DDPM noise from the base model's scheduler
config, epsilon or v-prediction targets, min-SNR-γ weighting, noise offset, multires noise, per-sample
prior-loss weight for regularization pictures, autocast on CUDA only (LoRA parameters stay fp32, the VAE
fp32). What the UNet is conditioned on per family (clip skip; SDXL's two encoders, pooled embedding and
size/crop time ids) lives in conditioning.py; what a run is given and gives back in spec.py; its models,
pictures and position in parts.py; its files and the state to resume from in checkpoints.py.

Files, in `<project>/output/`: `<name>-NN.safetensors` every `save_every_n_epochs` epochs (kohya keys, real
alpha, ss_* metadata), the newest `keep_last_n` kept, `state/state.pt` to resume from, and `<name>.safetensors`
(the last epoch) at the end.
"""
from __future__ import annotations

import contextlib
import gc
import math
import random
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from engine.errors import Invalid
from engine.models import warm
from engine.models.base import BaseModelInfo, load_pipeline, resolve_base_model
from engine.training import data
from engine.training.checkpoints import Checkpoints
from engine.training.conditioning import for_family
from engine.training.faults import divergence_message, is_out_of_memory, out_of_memory_message, training_precision
from engine.training.lora_inject import add_text_encoder_lora, add_unet_lora
from engine.training.lora_modules import Network
from engine.training.optimizers import make_lr_scheduler, make_optimizer, optimizer_step
from engine.training.options import group_learning_rates
from engine.training.parts import Models, Pictures, Position
from engine.training.spec import (
    Progress,
    TrainingDiverged,
    TrainingOOM,
    TrainResult,
    TrainSpec,
    output_dir,
    say,
    trained_caption,
)

# Non-finite steps skipped in a row before the run counts as diverged: one can be a bad batch, several in a
# row mean the LoRA itself went bad.
MAX_BAD_STEPS_IN_A_ROW = 3


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


def _free(modules: list[torch.nn.Module], on_cuda: bool) -> None:
    """Drops modules' weights (to the meta device): any later use fails loudly instead of holding memory. A
    warm worker keeps the base model for the next job: there they wait in host memory instead."""
    for module in modules:
        module.to("cpu" if warm.is_warm() else "meta")
    gc.collect()
    if on_cuda:
        torch.cuda.empty_cache()


# --- the run's parts ---------------------------------------------------------------------------------


def _set_up_models(spec: TrainSpec, info: BaseModelInfo, precision: str) -> Models:
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
    network = Network.of(opts)
    groups = [{"params": add_unet_lora(unet, network), "lr": unet_lr}]
    unet.train()
    if opts.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    te_params: list[torch.nn.Parameter] = []
    for encoder in text.encoders:
        encoder.train(opts.train_text_encoder)
        if opts.train_text_encoder:
            te_params += add_text_encoder_lora(encoder, network)
            if opts.gradient_checkpointing:
                encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if te_params:
        groups.append({"params": te_params, "lr": te_lr})
    return Models(info, pipe, unet, vae, text, weight_dtype, amp_dtype, noise_scheduler, unet_lr, te_lr, groups)


def _batch_loss(spec: TrainSpec, models: Models, pictures: Pictures, latents: data.LatentCache,
                batch: list[data.Sample], rng: random.Random, noise_gen: torch.Generator) -> torch.Tensor:
    """One batch's loss as sd-scripts computes it: the cached latents (flipped at random), DDPM noise (with
    offset / multires noise) at random timesteps, the UNet's prediction against the noise or velocity, per
    sample weighted by the prior-loss weight for reg pictures and min-SNR-γ."""
    opts, device, scheduler = spec.options, spec.device, models.noise_scheduler
    flips = [opts.flip_aug and rng.random() < 0.5 for _ in batch]
    captions = [trained_caption(spec, sample) for sample in batch]
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


class _Speed:
    """Steps per second of this run (a resumed run counts from its own start) and the time left."""

    def __init__(self, total_steps: int, resumed_from: int) -> None:
        self.total_steps, self.resumed_from = total_steps, resumed_from
        self.started, self.steps = time.perf_counter(), 0

    @property
    def it_s(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.steps / elapsed if elapsed > 0 else 0.0

    def progress(self, position: Position, epoch: int, lr: float) -> Progress:
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
    pictures = Pictures.load(spec)

    # Set up: seeds, the precision this card runs, the models with LoRA, optimizer and schedule.
    random.seed(opts.seed)
    torch.manual_seed(opts.seed)
    precision, why = training_precision(
        opts.mixed_precision, spec.device, lambda: torch.cuda.is_bf16_supported(including_emulation=False))
    if why:
        say(spec, why)
    if on_cuda:   # the parts kept in fp32 (LoRA weights, VAE) use TF32 matmuls, as sd-scripts allows
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    models = _set_up_models(spec, info, precision)
    optimizer = make_optimizer(opts, spec.device, models.groups, lambda line: say(spec, line))
    steps_per_epoch = pictures.steps_per_epoch(opts)
    total_steps = steps_per_epoch * opts.epochs
    if total_steps > opts.max_train_steps_cap:
        raise Invalid(f"this would be {total_steps:,} steps; the server allows {opts.max_train_steps_cap:,}: "
                      "lower repeats or epochs")
    lr_scheduler = make_lr_scheduler(opts, optimizer, total_steps, math.ceil(total_steps * opts.warmup_ratio))
    scaler = torch.amp.GradScaler("cuda", enabled=models.amp_dtype == torch.float16)
    noise_gen = torch.Generator().manual_seed(opts.seed)

    # Restore an interrupted run of the same training, or start afresh.
    checkpoints = Checkpoints(spec, models, pictures, optimizer, lr_scheduler, scaler, noise_gen, steps_per_epoch)
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
            say(spec, f"epoch {epoch} ended on {len(bad_steps)} skipped step(s): its file is not saved")
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
