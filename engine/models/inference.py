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
