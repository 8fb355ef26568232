"""Base-model pipelines for drawing pictures (reg pictures, sample grids), and the one GPU they share:
which device to use, in which precision, and giving its memory back before the next model loads."""
from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from engine.models.base import BaseModelInfo, load_pipeline


def preferred_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def inference_dtype(device: str) -> Any:
    """fp16 on a GPU (SDXL's pipeline upcasts its VAE itself, as its config asks); fp32 on a CPU, where
    half precision is slow or missing."""
    import torch

    return torch.float16 if str(device).startswith("cuda") else torch.float32


def release_gpu_memory() -> None:
    """Gives dropped models' memory back before the next model (or onnxruntime's tagger) asks for its own."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_inference_pipeline(info: BaseModelInfo, *, device: str, dtype: Any = None,
                            config: str | Path | None = None, cache_dir: str = "") -> Any:
    """The base pipeline ready to draw: every module in eval mode, checkpointing off (a pipeline left
    set up for training would recompute activations for nothing), no progress bars."""
    pipe = load_pipeline(info, dtype=inference_dtype(device) if dtype is None else dtype, device=device,
                         config=config, cache_dir=cache_dir)
    pipe.set_progress_bar_config(disable=True)
    if getattr(pipe.unet, "is_gradient_checkpointing", False):
        pipe.unet.disable_gradient_checkpointing()
    for name in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipe, name, None)
        # transformers 5 renamed is_gradient_checkpointing (deprecated) to is_activation_checkpointing.
        flag = "is_activation_checkpointing" if hasattr(type(encoder), "is_activation_checkpointing") \
            else "is_gradient_checkpointing"
        if encoder is not None and getattr(encoder, flag, False):
            encoder.gradient_checkpointing_disable()
    for module in (getattr(pipe, n, None) for n in ("unet", "vae", "text_encoder", "text_encoder_2")):
        if module is not None:
            module.eval()
    return pipe


def draw(pipeline: Any, prompt_arguments: dict[str, Any], seeds: list[int], *, device: str, steps: int,
         guidance: float, width: int, height: int) -> Any:
    """One batch, one picture per seed: float pixels [n, height, width, 3] in 0–1.

    Each picture gets its own seeded generator (diffusers draws each latent, and each ancestral sampler's
    noise, from its own batch row's generator), so a picture looks the same whether it was drawn in a batch
    or alone; on a GPU another batch make-up may change the last bit of some pixels (kernels pick other
    summation orders), never the picture. `prompt_arguments` hold one prompt (or embedding row) per seed.
    Out of GPU memory: the cache is emptied and torch's error goes on, for the caller to say which
    batch size to lower."""
    import torch

    generators = [torch.Generator(device).manual_seed(seed) for seed in seeds]
    try:
        with torch.inference_mode():
            return pipeline(**prompt_arguments, num_inference_steps=steps, guidance_scale=guidance, width=width,
                            height=height, generator=generators, output_type="np").images
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        raise


def to_image(pixels: Any) -> Any:
    """A PIL picture of `draw`'s float pixels (as diffusers' own "pil" output rounds them)."""
    import numpy as np
    from PIL import Image

    return Image.fromarray((np.clip(pixels, 0.0, 1.0) * 255).round().astype(np.uint8))
