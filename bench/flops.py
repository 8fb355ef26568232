"""Counted, not timed: the floating-point work of one LoRA training step of the reference loop, per phase.

The tiny test model's proportions are not SD1.5's (its VAE has two blocks, so it halves the picture where
SD1.5's divides by 8, and its UNet is tiny), and this machine has no GPU and no SD1.5 weights. The models
are therefore also built on PyTorch's `meta` device (shapes only, no memory, no weights) with SD1.5's
published configuration, and `torch.utils.flop_counter` counts each phase: VAE encode, text encoder, UNet
forward + backward (gradients of the activations, which LoRA training needs through the frozen layers;
the LoRA weights' own gradients are a few percent more and left out). Where the time follows the work
(compute-bound, as on a GPU at 512 px), the share of the VAE and text encoder bounds what caching gains.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

# The published stable-diffusion-v1-5 configuration (unet/, vae/, text_encoder/ config.json), the values
# that differ from the libraries' defaults.
SD15_UNET = {"sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8,
             "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
             "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
             "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}
SD15_VAE = {"block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4, "layers_per_block": 2, "latent_channels": 4,
            "sample_size": 512}
SD15_TEXT = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
             "num_hidden_layers": 12, "max_position_embeddings": 77, "projection_dim": 768}
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
