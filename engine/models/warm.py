"""The base model a warm GPU worker keeps loaded between jobs (`python -m engine.worker --serve`).

A reg job, the training after it and the sample grids after that all load the same base model; in a warm
worker the second and third find it in memory. Only the last model is kept (one GPU holds one base model
comfortably, two may not fit). A job may change the pipeline it was handed: the trainer puts LoRA layers
into the UNet and text encoders, casts the VAE to fp32, parks the VAE and frozen encoders off the GPU and
switches gradient checkpointing on; a renderer loads and unloads adapters. `reset()` runs between jobs and
undoes all of that, so the next job gets the pipeline as it was loaded: the same modules, devices, dtypes
and scheduler, nothing trainable, no adapter left.

Outside a warm worker (`keep_models()` never called) nothing is kept: each job process loads what it needs.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@dataclass
class _Kept:
    key: Hashable
    pipeline: Any
    placement: dict[str, tuple[Any, Any]]   # component → (device, dtype) as loaded
    scheduler: Any


_keeping = False
_announcing = False
_kept: _Kept | None = None


def announce_loads() -> None:
    """This process is a job's worker: say in the job's log where its base model came from."""
    global _announcing
    _announcing = True


def _say(message: str) -> None:
    if _announcing:
        print(f"lorabake: {message}", file=sys.stderr, flush=True)


def keep_models(keep: bool = True) -> None:
    """This process is a warm worker: keep the last base model between jobs (False: no longer, and the
    kept one is let go; whoever holds it keeps using it)."""
    global _keeping
    _keeping = keep
    if not keep:
        forget()


def is_warm() -> bool:
    return _keeping


def pipeline(key: Hashable, load: Callable[[], Any]) -> Any:
    """The pipeline for `key`: the kept one when it is the same model, else `load()` (kept from then on, in a
    warm worker, in place of the last one)."""
    global _kept
    if _kept is not None and _kept.key == key:
        _say("base model kept from an earlier job")
        return _kept.pipeline
    forget()
    started = time.monotonic()
    loaded = load()
    _say(f"base model loaded in {time.monotonic() - started:.1f} s")
    if _keeping:
        _kept = _Kept(key, loaded, _placement(loaded), getattr(loaded, "scheduler", None))
    return loaded


def forget() -> None:
    """Drops the kept model (another one is wanted, or the worker is about to take a different job kind
    that needs the memory)."""
    global _kept
    if _kept is None:
        return
    _kept = None
    from engine.models.inference import release_gpu_memory

    release_gpu_memory()


def reset() -> None:
    """Puts the kept pipeline back as it was loaded (see the module docstring)."""
    if _kept is None:
        return
    pipe = _kept.pipeline
    if "peft" in sys.modules:   # no peft imported: no LoRA layer can exist
        for name in COMPONENTS:
            module = getattr(pipe, name, None)
            if module is not None:
                _strip_lora(module)
    for name, (device, dtype) in _kept.placement.items():
        module = getattr(pipe, name)
        module.to(device=device, dtype=dtype)
        module.requires_grad_(False)
        module.eval()
    if _kept.scheduler is not None:
        pipe.scheduler = _kept.scheduler


def _placement(pipe: Any) -> dict[str, tuple[Any, Any]]:
    found = {}
    for name in COMPONENTS:
        module = getattr(pipe, name, None)
        if module is not None:
            parameter = next(module.parameters())
            found[name] = (parameter.device, parameter.dtype)
    return found


def _strip_lora(model: Any) -> None:
    """Every peft layer replaced by the layer it wraps (nothing was merged into it), and the adapter
    bookkeeping peft and diffusers leave on the model removed."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer) and name:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    for attribute in ("peft_config", "_hf_peft_config_loaded"):
        if attribute in vars(model):
            delattr(model, attribute)
