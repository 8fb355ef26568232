"""Counted, not timed: the floating-point work of one LoRA training step of the reference loop, per phase.

The tiny test model's proportions are not SD1.5's (its VAE has two blocks, so it halves the picture where
SD1.5's divides by 8, and its UNet is tiny), and this machine has no GPU and no SD1.5 weights. The models
are therefore also built on PyTorch's `meta` device (shapes only, no memory, no weights) with SD1.5's
published configuration, and `torch.utils.flop_counter` counts each phase: VAE encode, text encoder, UNet
forward + backward (gradients of the activations, which LoRA training needs through the frozen layers;
the LoRA weights' own gradients are a few percent more and left out). Where the time follows the work
(compute-bound, as on a GPU at 512 px), the share of the VAE and text encoder bounds what caching gains.

Run on its own, it counts what each LoRA network adds to a step (attention only, kohya's module set, LoCon)
on SD1.5 and SDXL: engine/training/memory.py's STEP_COST, which the plan's time estimate uses.

    .venv/bin/python -m bench.flops
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from engine.devtools.published import SD15_TEXT, SD15_UNET, SD15_VAE

PHASES = ("vae", "text encoder", "unet forward + backward")


def _meta_models(folder: Path | None) -> tuple[Any, Any, Any]:
    """(unet, vae, text encoder) on the meta device: from a diffusers folder's configs, or SD1.5's."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        if folder is None:
            unet, vae = UNet2DConditionModel(**SD15_UNET), AutoencoderKL(**SD15_VAE)
            text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT))
        else:
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
            text = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
    for module in (unet, vae, text):
        module.requires_grad_(False)
    return unet, vae, text


def _count(work: Any) -> float:
    with FlopCounterMode(display=False) as counter:
        work()
    return float(counter.get_total_flops())


def step_flops(folder: Path | None, resolution: int, batch: int) -> dict[str, float]:
    """FLOPs per reference step and phase, for the model of a diffusers `folder` (None: SD1.5's shapes)."""
    unet, vae, text = _meta_models(folder)
    pixels = torch.empty(batch, 3, resolution, resolution, device="meta")
    ids = torch.zeros(batch, text.config.max_position_embeddings, dtype=torch.long, device="meta")
    vae_flops = _count(lambda: vae.encode(pixels).latent_dist.sample())
    latents = vae.encode(pixels).latent_dist.sample().detach().requires_grad_(True)
    hidden = text(ids)[0]
    timesteps = torch.zeros(batch, dtype=torch.long, device="meta")

    def unet_step() -> None:
        unet(latents, timesteps, hidden).sample.float().square().mean().backward()

    return {"vae": vae_flops, "text encoder": _count(lambda: text(ids)[0]),
            "unet forward + backward": _count(unet_step)}


def describe(flops: dict[str, float]) -> str:
    """One line: TFLOPs and share per phase, and the speed-up caching VAE and text encoder would allow."""
    total = sum(flops.values())
    shares = ", ".join(f"{name} {flops[name] / 1e12:.3g} TFLOP ({100 * flops[name] / total:.0f} %)" for name in PHASES)
    return f"{shares}; caching both allows at most {total / flops['unet forward + backward']:.2f}×"


def lora_unet_step_flops(family: str, network: Any) -> float:
    """FLOPs of one U-Net forward + backward at the family's resolution, batch 1, with `network`'s LoRA (its
    parameters the only ones trained)."""
    from engine.devtools.published import meta_unet
    from engine.training.lora_inject import add_unet_lora

    resolution, context = {"sd15": (512, 768), "sdxl": (1024, 2048)}[family]
    unet = meta_unet(family)
    add_unet_lora(unet, network)
    latents = torch.empty(1, 4, resolution // 8, resolution // 8, device="meta")
    hidden = torch.empty(1, 77, context, device="meta")
    extra = {}
    if family == "sdxl":
        extra["added_cond_kwargs"] = {"text_embeds": torch.empty(1, 1280, device="meta"),
                                      "time_ids": torch.empty(1, 6, device="meta")}
    timesteps = torch.zeros(1, dtype=torch.long, device="meta")
    return _count(lambda: unet(latents, timesteps, hidden, **extra).sample.float().square().mean().backward())


def main() -> None:
    """The step's work per LoRA network, relative to attention only (memory.STEP_COST)."""
    import json

    from bench.common import machine, quiet_libraries
    from engine.training.lora_modules import Network

    quiet_libraries()
    print(machine())
    networks = {"attention": Network(16, 8, modules="attention"), "kohya": Network(16, 8),
                "locon": Network(16, 8, conv_dim=8, conv_alpha=1)}
    headline = {}
    for family in ("sd15", "sdxl"):
        flops = {name: lora_unet_step_flops(family, network) for name, network in networks.items()}
        headline[family] = {name: round(value / flops["attention"], 3) for name, value in flops.items()}
        print(f"{family}: U-Net forward + backward per image, dim 16 (LoCon conv 8): " + ", ".join(
            f"{name} {value / 1e12:.3f} TFLOP ({headline[family][name]:.3f}×)" for name, value in flops.items()))
    print(json.dumps({"step_cost_vs_attention": headline}))


if __name__ == "__main__":
    main()
