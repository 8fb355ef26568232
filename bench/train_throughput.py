"""Training throughput (steps/s) and peak memory: our trainer vs the loop of diffusers' LoRA example.

Goal (issue 5): ≥ 1.5× the steps/s of a loop written the way diffusers' `train_text_to_image_lora.py`
runs, same model, pictures and hyper-parameters, one run.

- **ours**: `engine.training.trainer.train` with the text encoder frozen and captions not shuffled, so it
  encodes each picture with the VAE once and each caption once (latent and text-embedding caches).
- **reference**: a compact re-implementation of the example's loop: peft LoRA put on the UNet with
  `unet.add_adapter(LoraConfig(...))` (same rank, alpha and modules as ours: kohya's set, lora_modules), AdamW, and
  in every step the picture loaded and preprocessed, tokenised, `vae.encode(pixels).latent_dist.sample()
  * scaling_factor` and `text_encoder(input_ids)`, then Gaussian noise, random timesteps, min-SNR-weighted
  MSE, gradient clipping and an optimizer step, as ours does (ours caches the latent posterior's mean, the
  example samples it: the same work). Like the example (`loss.item()` for its log) it reads the loss
  every step, as our trainer does.

Both run the same batches (the same schedule of pictures), batch size, learning rate, rank/alpha,
constant learning rate, fp32 on the CPU (fp16 mixed precision on CUDA, as both default to). Each side
runs in a fresh subprocess per round, so that its peak memory (ru_maxrss; on CUDA also the peak of
torch's allocator) is its own; rounds alternate A B, B A. Steps/s are counted after `--warmup` steps.
The reference then runs `--profile-steps` more steps with a timer (and a CUDA synchronize) around each
phase: data, VAE, text encoder, UNet forward, backward, optimizer. The tiny test model's VAE is a far
smaller part of a step than SD1.5's, so its ratio is not SD1.5's: `bench/flops.py` counts the work of
each phase for this model and for SD1.5's shapes at 512 px, and `--base-model` on a GPU measures it.

    .venv/bin/python -m bench.train_throughput [--resolution 128 --steps 10 --rounds 2] [--json]
    .venv/bin/python -m bench.train_throughput --base-model PATH --device cuda --resolution 512
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.common import THREADS_HELP, base_model, default_threads, interleaved, machine, quiet_libraries
from bench.flops import describe, step_flops
from engine.devtools.pictures import picture
from engine.models.base import load_pipeline, resolve_base_model
from engine.training import data
from engine.training.captions import with_trigger

GOAL = 1.5
SIDES = ("reference", "ours")
TRIGGER = "tok"
REPO = Path(__file__).resolve().parents[1]
PHASES = ("data", "vae", "text encoder", "unet forward", "backward", "optimizer")


@dataclass(frozen=True)
class Setup:
    """Everything a child run needs; the same for both sides."""
    base_model: str
    project: str
    device: str
    resolution: int
    batch_size: int
    rank: int
    alpha: float
    lr: float
    min_snr_gamma: float
    mixed_precision: str   # "fp16", "bf16" or "no"; only used on CUDA
    repeats: int
    warmup: int
    steps: int
    profile_steps: int
    seed: int
    threads: int           # torch CPU threads; 0 = torch's default


@dataclass(frozen=True)
class Run:
    side: str
    steps_per_s: float
    peak_rss_mib: float
    peak_vram_mib: float | None
    breakdown_ms: dict[str, float]   # reference only: mean ms per step in each phase


def _weight_dtype(setup: Setup) -> torch.dtype:
    if not setup.device.startswith("cuda"):
        return torch.float32
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(setup.mixed_precision, torch.float32)


def _peaks(setup: Setup) -> tuple[float, float | None]:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux reports KiB
    vram = torch.cuda.max_memory_allocated() / 2**20 if setup.device.startswith("cuda") else None
    return rss, vram


def _batches(setup: Setup) -> list[list[data.Sample]]:
    """The batches of epoch 1, as our trainer makes them (one bucket: every picture is square)."""
    items, _ = data.load_items(Path(setup.project) / "dataset", None)
    samples = data.epoch_schedule(items, [], setup.repeats, setup.seed, 1)
    rng = random.Random(data.epoch_seed(setup.seed, 1) ^ 0x5EED)
    return data.make_batches(samples, lambda _: (setup.resolution, setup.resolution), setup.batch_size, rng)


# --- ours -------------------------------------------------------------------------------------------


class _Enough(Exception):
    """Raised from the progress callback to end our run after the timed steps."""



def run_ours(setup: Setup) -> Run:
    from engine.training.options import preset
    from engine.training.trainer import TrainSpec, train

    res = setup.resolution
    options = dataclasses.replace(
        preset("sd15"), resolution=res, bucket_min=res, bucket_max=res, bucket_step=64, repeats=setup.repeats,
        epochs=1, batch_size=setup.batch_size, unet_lr=setup.lr, train_text_encoder=False, shuffle_captions=False,
        lr_scheduler="constant", warmup_ratio=0.0, min_snr_gamma=setup.min_snr_gamma, network_dim=setup.rank,
        network_alpha=setup.alpha, optimizer="adamw", clip_skip=1, flip_aug=False, noise_offset=0.0,
        multires_noise_iterations=0, mixed_precision=setup.mixed_precision, gradient_checkpointing=False,
        seed=setup.seed,
    )
    if setup.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    stamps: list[float] = []
    end = setup.warmup + setup.steps

    def progress(_progress: object) -> None:
        stamps.append(time.perf_counter())
        if len(stamps) == end:   # the reference's profiled steps have no counterpart here: stop
            raise _Enough

    spec = TrainSpec(project_dir=Path(setup.project), name="bench", base_model=setup.base_model, options=options,
                     trigger=TRIGGER, device=setup.device)
    with contextlib.suppress(_Enough):
        train(spec, progress)
    if len(stamps) < end:
        raise SystemExit(f"ours ran {len(stamps)} steps, fewer than warm-up + steps = {end}")
    rss, vram = _peaks(setup)
    return Run("ours", setup.steps / (stamps[end - 1] - stamps[setup.warmup - 1]), rss, vram, {})


# --- the reference: diffusers' train_text_to_image_lora.py loop ---------------------------------------


class _Phases:
    """Per-phase wall time; synchronises CUDA at each lap only when profiling (it would slow the timed steps)."""

    def __init__(self, device: str) -> None:
        self.sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        self.profiling = False
        self.totals = dict.fromkeys(PHASES, 0.0)
        self._last = 0.0

    def start(self) -> None:
        if self.profiling:
            self.sync()
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        if self.profiling:
            self.sync()
            now = time.perf_counter()
            self.totals[phase] += now - self._last
            self._last = now


def run_reference(setup: Setup) -> Run:
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params, compute_snr
    from peft import LoraConfig

    from engine.training.lora_modules import Network, unet_targets

    device, weight_dtype = setup.device, _weight_dtype(setup)
    info = resolve_base_model(setup.base_model)
    pipe = load_pipeline(info, dtype=weight_dtype, device=device)
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config, prediction_type=info.prediction)
    unet.add_adapter(LoraConfig(r=setup.rank, lora_alpha=setup.alpha, init_lora_weights="gaussian",
                                target_modules=sorted(unet_targets(unet, Network(setup.rank, setup.alpha)))))
    if weight_dtype != torch.float32:
        cast_training_params(unet, dtype=torch.float32)   # the example keeps LoRA weights in fp32
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=setup.lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    batches = _batches(setup)[: setup.warmup + setup.steps + setup.profile_steps]
    lr_scheduler = get_scheduler("constant", optimizer, num_warmup_steps=0, num_training_steps=len(batches))
    use_amp = weight_dtype != torch.float32
    scaler = torch.amp.GradScaler("cuda", enabled=weight_dtype == torch.float16)
    autocast = (lambda: torch.autocast("cuda", dtype=weight_dtype)) if use_amp else contextlib.nullcontext
    unet.train()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    phases, stamps = _Phases(device), []
    for index, batch in enumerate(batches):
        phases.profiling = index >= setup.warmup + setup.steps
        phases.start()
        # The example's dataset transform runs in the training loop (dataloader_num_workers defaults to 0).
        pixels = torch.stack([data.load_pixels(s.item.path, (setup.resolution,) * 2) for s in batch])
        captions = [with_trigger(s.item.caption, TRIGGER) for s in batch]
        input_ids = tokenizer(captions, max_length=tokenizer.model_max_length, padding="max_length",
                              truncation=True, return_tensors="pt").input_ids
        pixels, input_ids = pixels.to(device, dtype=weight_dtype), input_ids.to(device)
        phases.lap("data")
        latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
        phases.lap("vae")
        hidden = text_encoder(input_ids, return_dict=False)[0]
        phases.lap("text encoder")
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  device=device).long()
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        target = noise if info.prediction == "epsilon" else noise_scheduler.get_velocity(latents, noise, timesteps)
        with autocast():
            pred = unet(noisy, timesteps, hidden, return_dict=False)[0]
        if setup.min_snr_gamma > 0:
            snr = compute_snr(noise_scheduler, timesteps)
            weights = torch.stack([snr, setup.min_snr_gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
            weights = weights / snr if info.prediction == "epsilon" else weights / (snr + 1)
            loss = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="none")
            loss = (loss.mean(dim=list(range(1, loss.ndim))) * weights).mean()
        else:
            loss = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="mean")
        phases.lap("unet forward")
        scaler.scale(loss).backward()
        phases.lap("backward")
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)
        scaler.update()
        lr_scheduler.step()
        optimizer.zero_grad()
        if not math.isfinite(loss.item()):   # the example logs loss.item() every step
            raise SystemExit(f"reference loss is not finite at step {index + 1}")
        phases.lap("optimizer")
        stamps.append(time.perf_counter())
    rss, vram = _peaks(setup)
    end = setup.warmup + setup.steps
    rate = setup.steps / (stamps[end - 1] - stamps[setup.warmup - 1])
    breakdown = {k: 1000 * v / max(1, setup.profile_steps) for k, v in phases.totals.items()}
    return Run("reference", rate, rss, vram, breakdown)


def run_load_only(setup: Setup) -> Run:
    """The model alone: import, load, nothing else (what both peaks share)."""
    load_pipeline(resolve_base_model(setup.base_model), dtype=_weight_dtype(setup), device=setup.device)
    rss, vram = _peaks(setup)
    return Run("load only", 0.0, rss, vram, {})


CHILDREN = {"ours": run_ours, "reference": run_reference, "load only": run_load_only}


# --- the parent -------------------------------------------------------------------------------------


def child(side: str, setup: Setup) -> Run:
    out = subprocess.run([sys.executable, "-m", "bench.train_throughput", "--child", side,
                          "--setup", json.dumps(dataclasses.asdict(setup))],
                         cwd=REPO, capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"the {side} run failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return Run(**json.loads(lines[-1][len("RESULT "):]))


def make_project(folder: Path, images: int, resolution: int) -> None:
    dataset = folder / "dataset"
    dataset.mkdir(parents=True)
    for i in range(images):
        (dataset / f"{i:03d}.png").write_bytes(picture(i, size=(resolution, resolution)))
        (dataset / f"{i:03d}.txt").write_text(f"{TRIGGER}, tag{i}, red hair, blue eyes, smiling", encoding="utf-8")


def report(setup: Setup, runs: list[Run], load: Run, flops: dict[str, dict[str, float]], as_json: bool, *,
           real_layout: bool = False) -> None:
    rates = {side: statistics.median(r.steps_per_s for r in runs if r.side == side) for side in SIDES}
    rss = {side: max(r.peak_rss_mib for r in runs if r.side == side) for side in SIDES}
    vram = {side: max((r.peak_vram_mib or 0.0) for r in runs if r.side == side) for side in SIDES}
    ratio = rates["ours"] / rates["reference"]
    ref_breakdown = {k: statistics.mean(r.breakdown_ms[k] for r in runs if r.side == "reference") for k in PHASES}
    profiled = sum(ref_breakdown.values())
    unet_ms = ref_breakdown["unet forward"] + ref_breakdown["backward"]
    if as_json:
        print(json.dumps({
            "machine": machine(torch), "setup": dataclasses.asdict(setup),
            "runs": [dataclasses.asdict(r) for r in runs],
            "load_only": dataclasses.asdict(load), "median_steps_per_s": rates, "peak_rss_mib": rss,
            "peak_vram_mib": vram if setup.device.startswith("cuda") else None, "ratio": ratio, "goal": GOAL,
            "reference_breakdown_ms": ref_breakdown, "reference_unet_share": unet_ms / profiled,
            "reference_step_flops": flops,
        }, indent=2))
        return
    cuda = setup.device.startswith("cuda")
    print(f"\n{'side':>10} | {'steps/s per round':<24} | {'median':>7} | {'peak RSS':>9}"
          + (" | peak VRAM" if cuda else ""))
    for side in SIDES:
        per_round = " ".join(f"{r.steps_per_s:.2f}" for r in runs if r.side == side)
        line = f"{side:>10} | {per_round:<24} | {rates[side]:7.2f} | {rss[side]:6.0f} MiB"
        print(line + (f" | {vram[side]:6.0f} MiB" if cuda else ""))
    print(f"{'load only':>10} | {'':<24} | {'':>7} | {load.peak_rss_mib:6.0f} MiB"
          + (f" | {load.peak_vram_mib:6.0f} MiB" if cuda else ""))
    print(f"\nratio ours / reference: {ratio:.2f}× (goal ≥ {GOAL}×: {'met' if ratio >= GOAL else 'NOT met'})")
    print(f"\nreference step, {setup.profile_steps} profiled steps per round (timers"
          f"{' with CUDA synchronize' if cuda else ''}): {profiled:.1f} ms")
    for phase in PHASES:
        print(f"  {phase:>13}: {ref_breakdown[phase]:7.1f} ms  {100 * ref_breakdown[phase] / profiled:5.1f} %")
    print(f"  UNet forward + backward: {100 * unet_ms / profiled:.1f} % of the reference step; "
          f"ours takes {1000 / rates['ours']:.1f} ms a step, the reference's UNet + optimizer alone "
          f"{unet_ms + ref_breakdown['optimizer']:.1f} ms")
    print("\nwork per reference step, counted (bench/flops.py), not timed:")
    for name, counted in flops.items():
        print(f"  {name}: {describe(counted)}")
    shares = {"vae": ref_breakdown["vae"] / profiled, "text_encoder": ref_breakdown["text encoder"] / profiled,
              "unet": unet_ms / profiled}
    print(json.dumps({"bench": "train_throughput", "real_layout": real_layout,
                      ("real_layout_ratio" if real_layout else "ratio"): round(ratio, 3),
                      "shares": {k: round(v, 3) for k, v in shares.items()}}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", default="", help="SD1.x diffusers folder or .safetensors (default: tiny)")
    parser.add_argument("--real-layout", action="store_true",
                        help="SD1.5's published architecture with random weights (written, ~2 GB; fp32 on CPU): "
                             "256 px, 2 pictures, batch 1, 1 warm-up + 3 timed steps, 1 round unless given")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resolution", type=int, default=128, help="square pictures, a multiple of 64")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=8.0)
    parser.add_argument("--mixed-precision", default="fp16", choices=("fp16", "bf16", "no"), help="CUDA only")
    parser.add_argument("--warmup", type=int, default=2, help="steps not timed")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--profile-steps", type=int, default=3, help="reference steps timed phase by phase")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side, alternating")
    parser.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--child", choices=tuple(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--setup", help=argparse.SUPPRESS)
    args = parser.parse_args()
    quiet_libraries()

    if args.child:
        setup = Setup(**json.loads(args.setup))
        if setup.threads:
            torch.set_num_threads(setup.threads)
        run = CHILDREN[args.child](setup)
        print("RESULT " + json.dumps(dataclasses.asdict(run)))
        return
    if args.real_layout:
        if args.base_model:
            parser.error("--real-layout builds its own model: leave out --base-model")
        given = {a.split("=")[0] for a in sys.argv[1:]}
        for option, value in (("--resolution", 256), ("--images", 2), ("--batch-size", 1), ("--warmup", 1),
                              ("--steps", 3),
                              ("--profile-steps", 2), ("--rounds", 1)):
            if option not in given:
                setattr(args, option[2:].replace("-", "_"), value)
    if args.resolution % 64 or args.warmup < 1 or args.steps < 1:
        parser.error("--resolution must be a multiple of 64, --warmup and --steps at least 1")
    with tempfile.TemporaryDirectory(prefix="lorabake-bench-") as tmp:
        root = Path(tmp)
        if args.real_layout:
            from engine.devtools.published import write_random_sd15

            args.base_model = str(write_random_sd15(root / "sd15-random"))
        info = base_model(args.base_model, root, parser)
        base, family = info.spec, info.family
        if family != "sd15":
            parser.error(f"--base-model {base} is {family}: this benchmark compares SD 1.x training loops only")
        make_project(root / "project", args.images, args.resolution)
        needed = args.warmup + args.steps + args.profile_steps
        setup = Setup(base_model=base, project=str(root / "project"), device=args.device,
                      resolution=args.resolution, batch_size=args.batch_size, rank=args.rank, alpha=args.alpha,
                      lr=5e-4, min_snr_gamma=5.0, mixed_precision=args.mixed_precision,
                      repeats=math.ceil(needed * args.batch_size / args.images), warmup=args.warmup,
                      steps=args.steps, profile_steps=args.profile_steps, seed=42,
                      threads=default_threads(args.device) if args.threads is None else args.threads)
        say = (lambda *_: None) if args.json else print
        say(f"machine: {machine(torch)}; device {args.device}")
        say(f"model: {args.base_model or 'tiny SD1.5 (engine.devtools.tiny_models)'}; {args.images} pictures "
            f"{args.resolution}×{args.resolution}, batch {args.batch_size}, rank {args.rank}/alpha {args.alpha:g}, "
            f"AdamW lr 5e-4 constant, min-SNR 5; {args.warmup} warm-up + {args.steps} timed steps per run, "
            f"a fresh process per run, {setup.threads or 'default'} torch threads")
        runs: list[Run] = []
        for round_no in range(args.rounds):
            for side in interleaved(SIDES, round_no):
                run = child(side, setup)
                runs.append(run)
                say(f"round {round_no + 1} {side:>9}: {run.steps_per_s:6.2f} steps/s, peak RSS "
                    f"{run.peak_rss_mib:.0f} MiB"
                    + (f", VRAM {run.peak_vram_mib:.0f} MiB" if run.peak_vram_mib else ""))
        load = child("load only", setup)
        flops = {}
        if (Path(base) / "unet" / "config.json").is_file():   # a diffusers folder (the tiny model is one)
            flops[f"this model at {args.resolution} px"] = step_flops(Path(base), args.resolution, args.batch_size)
        flops["SD1.5's shapes at 512 px"] = step_flops(None, 512, args.batch_size)
        report(setup, runs, load, flops, args.json, real_layout=args.real_layout)


if __name__ == "__main__":
    main()
