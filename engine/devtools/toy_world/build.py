"""`lorabake dev toy-world build DIR`: train the toy world's base model and tagger on a CPU.

Steps (each seeded, so a build is repeatable; one progress bar over all of them):
1. pictures: `pictures` figures from the world's priors (none with the character's look);
2. VAE: AutoencoderKL with 3 blocks (×4 down: 64 px → 16×16×4 latents), fully convolutional, trained on
   random 32×32 crops; its scaling_factor is 1 / the latents' std, as SD's was chosen;
3. tagger: a small CNN with WD14's interface (448×448 BGR in, one sigmoid per tag), trained on the
   pictures as the real tagging job prepares them, clean and after a VAE round trip (what samples look
   like), then written as model.onnx + selected_tags.csv;
4. base model: CLIPTextModel (64 wide, 2 layers) and UNet2DConditionModel trained together, v-prediction
   on a zero-terminal-SNR schedule (so the prompt, not the starting noise, decides the background),
   EMA weights. Captions are varied as members' prompts vary: tags shuffled and dropped, unknown words
   mixed in (so the base model learns to ignore words it does not know, like a trigger or "masterpiece"),
   1 in 10 empty (for classifier-free guidance), read at clip skip 1 or 2;
5. how well it draws: samples for held-out attribute prompts, read back by the tagger (per attribute).

What the probe of this world found, and this build relies on: a frozen random text encoder binds only
the first tag of a caption, and the standard SD schedule lets the starting noise, not the prompt, pick
the background at 16×16 latents.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from engine.devtools.tiny_models import save_pipeline
from engine.devtools.toy_world import tagger as toy_tagger
from engine.devtools.toy_world import world
from engine.devtools.toy_world.fit import descend, one_cycle_adamw
from engine.devtools.toy_world.tokenizer import write_toy_tokenizer

# Unknown words mixed into captions: everyday English plus what lorabake's own prompts say.
_PROMPT_WORDS = [
    "masterpiece", "best", "quality", "lowres", "bad", "anatomy", "hands", "text", "error", "missing", "fingers",
    "extra", "digit", "fewer", "digits", "cropped", "worst", "low", "jpeg", "artifacts", "signature", "watermark",
    "blurry", "portrait", "standing", "in", "a", "park", "upper", "body", "smiling", "castle", "on", "hill", "at",
    "sunset", "man", "woman", "girl", "boy", "person", "character"
]


@dataclass(frozen=True)
class BuildSettings:
    seed: int = 0
    pictures: int = 20_000
    vae_steps: int = 2_000
    tagger_steps: int = 4_000
    unet_steps: int = 3_000
    batch_size: int = 32
    eval_prompts: int = 48
    eval_steps: int = 20
    # Zero-terminal-SNR models oversaturate at high guidance: at 7 this one drew 77 % of asked attributes,
    # at 3 85 % (the first full build). The toy world's samples and reg pictures use 3 too.
    eval_guidance: float = 3.0

    @classmethod
    def quick(cls) -> BuildSettings:
        """Seconds, not minutes: proves the build runs end to end (tests); the models learn little."""
        return cls(pictures=256, vae_steps=4, tagger_steps=4, unet_steps=4, batch_size=8, eval_prompts=4,
                   eval_steps=2)


@dataclass(frozen=True)
class ToyWorldPaths:
    root: Path
    sd15: Path     # diffusers StableDiffusionPipeline folder
    tagger: Path   # model.onnx + selected_tags.csv
    report: Path   # build.json: settings, timings and measured quality


def paths_in(root: Path) -> ToyWorldPaths:
    root = Path(root)
    return ToyWorldPaths(root, root / "sd15", root / "tagger", root / "build.json")


class _Bar:
    """One tqdm bar over every step of the build (1 unit = 1 training step or 1 picture)."""

    def __init__(self, total: int, show: bool) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, disable=not show, unit="step", dynamic_ncols=True)

    def phase(self, name: str) -> None:
        self._bar.set_description(name)

    def advance(self, n: int = 1, **postfix: Any) -> None:
        self._bar.update(n)
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        self._bar.close()


def build(root: Path, settings: BuildSettings = BuildSettings(), *, progress: bool = True,
          log: Callable[[str], None] = print) -> ToyWorldPaths:
    import torch

    out = paths_in(root)
    for folder in (out.sd15, out.tagger):
        shutil.rmtree(folder, ignore_errors=True)
    s = settings
    bar = _Bar(s.pictures + s.vae_steps + s.tagger_steps + s.unet_steps + s.eval_prompts, progress)
    timings: dict[str, float] = {}
    try:
        started = time.monotonic()
        bar.phase("pictures")
        figures = world.base_figures(s.seed, s.pictures)
        pixels = np.stack([np.asarray(world.draw(f)) for f in _ticking(figures, bar)])
        timings["pictures_s"] = time.monotonic() - started

        started = time.monotonic()
        bar.phase("VAE")
        vae, psnr = _train_vae(pixels, s, bar)
        timings["vae_s"] = time.monotonic() - started

        started = time.monotonic()
        bar.phase("tagger")
        latents = _encode_all(vae, pixels)
        tag_accuracy = toy_tagger.train_and_write(out.tagger, vae, seed=s.seed + 6, steps=s.tagger_steps, bar=bar)
        timings["tagger_s"] = time.monotonic() - started

        started = time.monotonic()
        bar.phase("base model")
        pipe = _train_base(out.sd15, vae, latents, figures, s, bar)
        timings["base_model_s"] = time.monotonic() - started

        started = time.monotonic()
        bar.phase("checking")
        drawing = _check_drawing(pipe, out.tagger, s, bar)
        timings["check_s"] = time.monotonic() - started
    finally:
        bar.close()
    report = {"settings": asdict(s), "seconds": {k: round(v, 1) for k, v in timings.items()},
              "vae_psnr_db": round(psnr, 2), "tagger_accuracy_held_out": tag_accuracy,
              "drawing_accuracy": drawing, "torch_threads": torch.get_num_threads()}
    out.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out.root / "README.md").write_text(_readme(report), encoding="utf-8")
    log(f"toy world written to {out.root}: tagger {_mean(tag_accuracy):.1%} on held-out pictures, base model "
        f"draws {_mean(drawing):.1%} of asked attributes (tagger-read), VAE {psnr:.1f} dB")
    return out


def _readme(report: dict[str, Any]) -> str:
    s, seconds = report["settings"], report["seconds"]

    def table(per_attribute: dict[str, float]) -> str:
        return "\n".join(f"| {a} | {v:.1%} |" for a, v in per_attribute.items())

    return f"""# The toy world's models

Built by `lorabake dev toy-world build DIR --seed {s['seed']}` ({sum(seconds.values()) / 60:.0f} min on
{report['torch_threads']} torch threads; {', '.join(f'{k[:-2]} {v:.0f} s' for k, v in seconds.items())}).
How each part is made: `engine/devtools/toy_world/build.py`.

- `sd15/`: a diffusers StableDiffusionPipeline. VAE (16, 32, 32) channels, ×4 down (64 px ↔ 16×16×4),
  {s['vae_steps']} steps on 32 px crops: {report['vae_psnr_db']} dB PSNR. Text encoder: CLIPTextModel 64 wide, 2
  layers, trained with the U-Net; tokenizer: byte-level BPE with one token per world word. U-Net:
  (32, 64) channels, cross-attention at 16×16 and 8×8; v-prediction, zero-terminal-SNR schedule,
  {s['unet_steps']} steps of batch {s['batch_size']} on {s['pictures']:,} pictures, EMA weights.
- `tagger/`: model.onnx + selected_tags.csv with WD14's interface (448×448 BGR in, sigmoid per tag).

## How well the tagger reads held-out pictures (threshold 0.35, the tagging job's default)

| attribute | accuracy |
|---|---|
{table(report['tagger_accuracy_held_out'])}

## How well the base model draws

{s['eval_prompts']} prompts naming every attribute of a held-out figure, {s['eval_steps']} DDIM steps, guidance
{s['eval_guidance']:g}; the share of samples in which the tagger reads the asked value:

| attribute | accuracy |
|---|---|
{table(report['drawing_accuracy'])}
"""


def _mean(per_attribute: dict[str, float]) -> float:
    return sum(per_attribute.values()) / max(1, len(per_attribute))


def _ticking(items: list[Any], bar: _Bar) -> Any:
    for item in items:
        yield item
        bar.advance()


# --- VAE ---------------------------------------------------------------------------------------------


def _new_vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=world.SIZE,
        block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        mid_block_add_attention=False)


def _to_tensor(pixels: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _train_vae(pixels: np.ndarray, s: BuildSettings, bar: _Bar) -> tuple[Any, float]:
    import torch

    torch.manual_seed(s.seed + 1)
    vae = _new_vae()
    optimizer, schedule = one_cycle_adamw(vae.parameters(), 2e-3, s.vae_steps)
    rng = np.random.default_rng(s.seed + 1)
    vae.train()
    for _ in range(s.vae_steps):
        picks = rng.integers(0, len(pixels), s.batch_size)
        y, x = rng.integers(0, world.SIZE - 32 + 1, 2) // 4 * 4
        batch = _to_tensor(pixels[picks, y:y + 32, x:x + 32])
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample()).sample
        descend(torch.nn.functional.mse_loss(recon, batch) + 1e-6 * posterior.kl().mean(), optimizer, schedule, bar)
    vae.eval()
    with torch.no_grad():
        check = _to_tensor(pixels[:256])
        recon = vae.decode(vae.encode(check).latent_dist.mode()).sample.clamp(-1, 1)
        mse = torch.mean(((recon - check) / 2) ** 2).item()
    return vae, 10 * math.log10(1 / max(mse, 1e-10))


def round_trip(vae: Any, pixels: np.ndarray) -> np.ndarray:
    """Pictures (uint8 NHWC) after encoding and decoding: what a sample from the VAE can look like at best."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(pixels), 256):
            mean = vae.encode(_to_tensor(pixels[start:start + 256])).latent_dist.mode()
            decoded = vae.decode(mean).sample.clamp(-1, 1)
            out.append(((decoded + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def _encode_all(vae: Any, pixels: np.ndarray) -> Any:
    """Latent means of every picture, scaled to unit std (the VAE's scaling_factor is set here)."""
    import torch

    with torch.no_grad():
        latents = torch.cat([vae.encode(_to_tensor(pixels[start:start + 256])).latent_dist.mode()
                             for start in range(0, len(pixels), 256)])
    scale = float(1 / latents.std())
    vae.register_to_config(scaling_factor=scale)
    return latents * scale


# --- base model ----------------------------------------------------------------------------------------


def _schedulers() -> tuple[Any, Any]:
    """(training DDPM, sampling DDIM): SD1.5's betas rescaled to zero terminal SNR, v-prediction, trailing
    timesteps, as "Common Diffusion Noise Schedules and Sample Steps Are Flawed" prescribes."""
    from diffusers import DDIMScheduler, DDPMScheduler

    common = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
              "beta_schedule": "scaled_linear", "prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
              "timestep_spacing": "trailing"}
    return DDPMScheduler(**common), DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def _text_encoder(vocab_size: int, seed: int) -> Any:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                            num_hidden_layers=2, max_position_embeddings=77, layer_norm_eps=1e-5, hidden_act="gelu",
                            bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    encoder = CLIPTextModel(config)   # the tokenizer's vocabulary ends with BOS, EOS: the ids above
    with torch.no_grad():
        # Token embeddings at std ≈ 1 instead of 0.02: at 0.02 the residual stream of a 64-wide encoder is
        # swamped by its attention and MLP, and tags after the first become indistinguishable (probe).
        encoder.get_input_embeddings().weight.mul_(50)
    return encoder


def _new_unet() -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=world.SIZE // 4, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=8, cross_attention_dim=64, norm_num_groups=16)


def training_caption(figure: world.Figure, rng: random.Random, noise_words: list[str]) -> str:
    """A caption as people write prompts: some tags, in any order, maybe with words the world lacks."""
    if rng.random() < 0.1:
        return ""
    tags = [t for t in figure.tags() if rng.random() < 0.8]
    rng.shuffle(tags)
    if rng.random() < 0.4:
        for _ in range(rng.randint(1, 3)):
            tags.insert(rng.randint(0, len(tags)), rng.choice(noise_words))
    return ", ".join(tags)


def _noise_words() -> list[str]:
    from engine.devtools.toy_world.tokenizer import world_words

    common = (Path(__file__).parents[2] / "curation" / "data" / "common_words.txt").read_text(encoding="utf-8")
    known = set(world_words())
    words = {w.strip().lower() for w in common.split() if w.strip().isalpha()} | set(_PROMPT_WORDS)
    return sorted(w for w in words if w not in known)


def _train_base(folder: Path, vae: Any, latents: Any, figures: list[world.Figure], s: BuildSettings,
                bar: _Bar) -> Any:
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.optimization import get_scheduler
    from transformers import CLIPTokenizer

    from engine.training.conditioning import SD15Conditioning

    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = write_toy_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = _text_encoder(vocab_size, s.seed + 2)
    torch.manual_seed(s.seed + 3)
    unet = _new_unet()
    ddpm, ddim = _schedulers()
    params = [*unet.parameters(), *text_encoder.parameters()]
    ema = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    lr_schedule = get_scheduler("cosine", optimizer, num_warmup_steps=min(100, s.unet_steps // 10),
                                num_training_steps=max(1, s.unet_steps))
    rng = random.Random(s.seed + 4)
    gen = torch.Generator().manual_seed(s.seed + 4)
    noise_words = _noise_words()
    # Read at clip skip 1 and 2 alike, so the model serves LoRAs trained either way (kohya's SD1.5 default is 2).
    modules = SimpleNamespace(text_encoder=text_encoder, tokenizer=tokenizer)
    readers = {skip: SD15Conditioning(modules, clip_skip=skip, device="cpu", cache=False) for skip in (1, 2)}
    unet.train()
    text_encoder.train()
    for step in range(s.unet_steps):
        picks = [rng.randrange(len(figures)) for _ in range(s.batch_size)]
        captions = [training_caption(figures[i], rng, noise_words) for i in picks]
        x0 = latents[picks]
        noise = torch.randn(x0.shape, generator=gen)
        timesteps = torch.randint(0, 1000, (len(picks),), generator=gen)
        noisy = ddpm.add_noise(x0, noise, timesteps)
        target = ddpm.get_velocity(x0, noise, timesteps)
        hidden = readers[rng.choice((1, 2))].encode(captions).hidden
        pred = unet(noisy, timesteps, encoder_hidden_states=hidden).sample
        loss = torch.nn.functional.mse_loss(pred, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_schedule.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        bar.advance(loss=f"{loss.item():.4f}")
    with torch.no_grad():
        for p, averaged in zip(params, ema, strict=True):
            p.copy_(averaged)
    unet.eval()
    text_encoder.eval()
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=ddim, safety_checker=None, feature_extractor=None, image_encoder=None,
                                   requires_safety_checker=False)
    save_pipeline(pipe, folder, ("tokenizer",), write_toy_tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- how well it draws ---------------------------------------------------------------------------------


def _check_drawing(pipe: Any, tagger_folder: Path, s: BuildSettings, bar: _Bar) -> dict[str, float]:
    """Per attribute: the share of samples, for prompts naming every attribute of a held-out figure, in
    which the toy tagger reads the asked value."""
    import torch

    reader = toy_tagger.ToyReader(tagger_folder)
    rng = random.Random(s.seed + 5)
    correct = dict.fromkeys(world.ATTRIBUTES, 0)
    for n in range(s.eval_prompts):
        figure = world.random_figure(rng)
        image = pipe(world.caption(figure), num_inference_steps=s.eval_steps, guidance_scale=s.eval_guidance,
                     height=world.SIZE, width=world.SIZE,
                     generator=torch.Generator().manual_seed(s.seed + n)).images[0]
        read = reader.read(image)
        for attribute in world.ATTRIBUTES:
            correct[attribute] += read.get(attribute) == figure.value(attribute)
        bar.advance()
    return {a: round(c / max(1, s.eval_prompts), 3) for a, c in correct.items()}
