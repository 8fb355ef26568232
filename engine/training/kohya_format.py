"""Write LoRAs in the kohya / sd-scripts format that A1111, ComfyUI, Civitai and diffusers load (DESIGN §3).

Keys: `lora_unet_<module path, dots→_>.lora_down.weight` / `.lora_up.weight` / `.alpha` (a 0-dim tensor with
the real alpha; the loader scales by alpha / rank), text encoder `lora_te_…` (SD1.x) or `lora_te1_…` /
`lora_te2_…` (SDXL). We convert straight from peft's state dicts (`get_peft_model_state_dict`), never through
diffusers' `convert_state_dict_to_kohya`, which writes alpha = rank and mangles UNet keys when text-encoder
LoRA is present.

Text-encoder module paths: under transformers 5, peft reports `encoder.layers.0.self_attn.q_proj` for a
`CLIPTextModel` (no `text_model.`) but `text_model.encoder.layers.0.self_attn.q_proj` for a
`CLIPTextModelWithProjection`. A1111 and ComfyUI only know `lora_te_text_model_encoder_layers_…` and silently
ignore anything else, so every text-encoder path is normalised to start with `text_model_`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save as safetensors_save

from engine.training.lora_modules import Network
from engine.training.options import TrainOptions

Family = Literal["sd15", "sdxl"]

BASE_MODEL_VERSION = {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}
_TE_PREFIXES = {"sd15": ("lora_te",), "sdxl": ("lora_te1", "lora_te2")}
_MODELSPEC_ARCH = {"sd15": "stable-diffusion-v1/lora", "sdxl": "stable-diffusion-xl-v1-base/lora"}
# What sd-scripts' sai_model_spec writes for LoRAs: SD1 LoRAs are "diffusers", SDXL ones Stability's.
_MODELSPEC_IMPL = {"sd15": "diffusers", "sdxl": "https://github.com/Stability-AI/generative-models"}

# `<module path>.lora_A.weight`, also tolerating peft's un-stripped forms `.lora_A.<adapter>.weight` and a
# `base_model.model.` prefix (a PeftModel's state dict).
_PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")
KOHYA_KEY = re.compile(r"^lora_(?:unet|te|te1|te2)_[A-Za-z0-9_]+\.(?:lora_down\.weight|lora_up\.weight|alpha)$")


def _check_family(family: str) -> None:
    if family not in BASE_MODEL_VERSION:
        raise ValueError(f"unknown model family {family!r}; expected one of {sorted(BASE_MODEL_VERSION)}")


def _pairs(peft_state: Mapping[str, torch.Tensor], what: str) -> dict[str, dict[str, torch.Tensor]]:
    """Group peft keys into {module path: {"A": down, "B": up}}, refusing anything that is not plain LoRA."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in peft_state.items():
        match = _PEFT_KEY.match(key)
        if match is None:
            raise ValueError(f"{what}: {key!r} is not a LoRA A/B weight (DoRA, bias or embedding LoRA unsupported)")
        modules.setdefault(match["module"], {})[match["which"]] = tensor
    for module, pair in modules.items():
        if set(pair) != {"A", "B"}:
            raise ValueError(f"{what}: module {module!r} has lora_{''.join(pair)} but not both lora_A and lora_B")
    return modules


def _te_module_path(module: str) -> str:
    """`encoder.layers.0…` (transformers 5 CLIPTextModel) or `text_model.encoder…` → `text_model.encoder…`."""
    return module if module.startswith("text_model.") else "text_model." + module


def _add(out: dict[str, torch.Tensor], name: str, pair: dict[str, torch.Tensor], network: Network) -> None:
    down, up = pair["A"], pair["B"]
    conv3 = down.ndim == 4 and tuple(down.shape[2:]) != (1, 1)   # kohya's conv_dim modules
    rank, alpha = (network.conv_dim, network.conv_alpha) if conv3 else (network.dim, network.alpha)
    up_ok = up.ndim == down.ndim and (up.ndim == 2 or tuple(up.shape[2:]) == (1, 1))
    if down.ndim not in (2, 4) or not up_ok or down.shape[0] != rank or up.shape[1] != rank:
        raise ValueError(
            f"{name!r}: LoRA shapes down {tuple(down.shape)} / up {tuple(up.shape)} do not match rank {rank}"
        )
    if f"{name}.lora_down.weight" in out:
        raise ValueError(f"two modules map to the same kohya name {name!r}")
    out[f"{name}.lora_down.weight"] = down.detach()
    out[f"{name}.lora_up.weight"] = up.detach()
    out[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)


def _kohya_name(prefix: str, module_path: str) -> str:
    return f"{prefix}_{module_path.replace('.', '_')}"


def to_kohya_state_dict(
    unet_lora: Mapping[str, torch.Tensor],
    text_encoder_loras: Sequence[Mapping[str, torch.Tensor]],
    *,
    family: Family,
    network: Network,
    unet_names: Callable[[str], str] | None = None,
) -> dict[str, torch.Tensor]:
    """Convert peft state dicts (UNet, then text encoder(s) in pipeline order) into one kohya state dict.

    `text_encoder_loras` holds at most one dict for SD1.5 and at most two (text_encoder, text_encoder_2)
    for SDXL; an empty dict means that encoder was not trained. SDXL's U-Net modules are named the SGM way
    (`unet_names`: lora_modules.sgm_namer of the trained U-Net), as sd-scripts names them; SD 1.x keeps
    diffusers' paths. Tensors keep their dtype (see save_kohya_lora).
    """
    _check_family(family)
    if family == "sdxl" and unet_names is None:
        raise ValueError("SDXL LoRA names are the U-Net's SGM names: pass unet_names=lora_modules.sgm_namer(unet)")
    rename = unet_names or (lambda path: path)
    prefixes = _TE_PREFIXES[family]
    if len(text_encoder_loras) > len(prefixes):
        raise ValueError(f"{family} has {len(prefixes)} text encoder(s), got {len(text_encoder_loras)} LoRA dicts")
    out: dict[str, torch.Tensor] = {}
    for module, pair in sorted(_pairs(unet_lora, "unet").items()):
        _add(out, _kohya_name("lora_unet", rename(module)), pair, network)
    for prefix, te_lora in zip(prefixes, text_encoder_loras, strict=False):
        for module, pair in sorted(_pairs(te_lora, prefix).items()):
            _add(out, _kohya_name(prefix, _te_module_path(module)), pair, network)
    if not out:
        raise ValueError("no LoRA weights to save")
    return out


def _resolution_str(resolution: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(resolution, int):
        return (resolution, resolution)
    width, height = resolution
    return (int(width), int(height))


def kohya_metadata(
    *,
    base_model: str,
    family: Family,
    network: Network,
    unet_lr: float,
    text_encoder_lr: float | None,
    epochs: int,
    epoch: int,
    steps: int,
    resolution: int | tuple[int, int],
    tag_frequency: Mapping[str, Mapping[str, int]],
    extra: Mapping[str, str] | None = None,
    training_started_at: float | None = None,
    output_name: str | None = None,
) -> dict[str, str]:
    """sd-scripts' `ss_*` metadata (what A1111's and Civitai's metadata viewers read) plus minimal modelspec.

    `tag_frequency` is {dataset folder: {tag: count}}, as sd-scripts writes it. `text_encoder_lr` None or 0
    means the text encoder was not trained. `extra` entries (e.g. more `ss_*` keys) override the defaults.
    All values are strings, as safetensors metadata requires.
    """
    _check_family(family)
    width, height = _resolution_str(resolution)
    started = time.time() if training_started_at is None else training_started_at
    te_lr = 0.0 if text_encoder_lr is None else float(text_encoder_lr)
    name = output_name or Path(base_model).stem
    meta: dict[str, str] = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(int(network.dim)),
        "ss_network_alpha": str(float(network.alpha)),
        "ss_learning_rate": str(float(unet_lr)),
        "ss_unet_lr": str(float(unet_lr)),
        "ss_text_encoder_lr": str(te_lr),
        "ss_network_train_unet_only": str(te_lr == 0.0),
        "ss_num_epochs": str(int(epochs)),
        "ss_epoch": str(int(epoch)),
        "ss_steps": str(int(steps)),
        "ss_base_model_version": BASE_MODEL_VERSION[family],
        "ss_v2": "False",
        # sd-scripts stores the checkpoint's file name (A1111 matches on it), not a full local path.
        "ss_sd_model_name": Path(base_model).name or base_model,
        "ss_resolution": str((width, height)),
        "ss_tag_frequency": json.dumps({k: dict(v) for k, v in tag_frequency.items()}, ensure_ascii=False),
        "ss_training_started_at": str(started),
        "ss_training_finished_at": str(time.time()),
        "ss_output_name": name,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": _MODELSPEC_ARCH[family],
        "modelspec.implementation": _MODELSPEC_IMPL[family],
        "modelspec.title": name,
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.prediction_type": "epsilon",
        "modelspec.date": datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if network.is_locon:
        # What train_network.py writes for `--network_args conv_dim=… conv_alpha=…`: the typed strings.
        meta["ss_network_args"] = json.dumps({"conv_dim": str(network.conv_dim),
                                              "conv_alpha": f"{network.conv_alpha:g}"})
    for key, value in (extra or {}).items():
        meta[str(key)] = str(value)
    return meta


def options_metadata(options: TrainOptions, *, prediction: str, optimizer: str, train_images: int,
                     reg_images: int, total_steps: int) -> dict[str, str]:
    """The `ss_*` keys sd-scripts writes about how a run was set up (kohya_metadata's `extra`): schedule,
    optimizer (`optimizer`: its class and arguments, as sd-scripts writes them), noise, captions, buckets."""
    return {
        "ss_lr_scheduler": options.lr_scheduler, "ss_optimizer": optimizer,
        "ss_min_snr_gamma": str(options.min_snr_gamma), "ss_noise_offset": str(options.noise_offset),
        "ss_multires_noise_iterations": str(options.multires_noise_iterations),
        "ss_multires_noise_discount": str(options.multires_noise_discount),
        "ss_seed": str(options.seed),
        # sd-scripts writes None for SDXL, where clip skip does not apply.
        "ss_clip_skip": str(options.clip_skip) if options.family == "sd15" else "None",
        # sai_model_spec's name for clip skip, written where sd-scripts writes it.
        **({"modelspec.encoder_layer": str(options.clip_skip)} if options.family == "sd15" else {}),
        "ss_num_train_images": str(train_images * options.repeats),
        "ss_num_reg_images": str(reg_images), "ss_prior_loss_weight": str(options.prior_loss_weight),
        "ss_batch_size_per_device": str(options.batch_size), "ss_max_train_steps": str(total_steps),
        "ss_keep_tokens": str(options.keep_tokens), "ss_shuffle_caption": str(options.shuffle_captions),
        "ss_flip_aug": str(options.flip_aug), "ss_mixed_precision": options.mixed_precision,
        "ss_gradient_checkpointing": str(options.gradient_checkpointing),
        "ss_enable_bucket": "True", "ss_min_bucket_reso": str(options.bucket_min),
        "ss_max_bucket_reso": str(options.bucket_max), "ss_bucket_reso_steps": str(options.bucket_step),
        "modelspec.prediction_type": prediction,
    }


def _addnet_hashes(data: bytes) -> tuple[str, str]:
    """sd-scripts' `sshs_model_hash` (sha256 of the tensor bytes) and `sshs_legacy_hash` (A1111's old hash)."""
    header_len = int.from_bytes(data[:8], "little")
    model_hash = hashlib.sha256(data[8 + header_len :]).hexdigest()
    legacy_hash = hashlib.sha256(data[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]
    return model_hash, legacy_hash


def save_kohya_lora(
    path: Path,
    state: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write `state` (kohya keys) as safetensors with `metadata`, atomically (temp file, then rename).

    Floating-point tensors, `.alpha` included, are saved in `dtype` (fp16 by default, as sd-scripts does).
    Adds sd-scripts' `sshs_model_hash` / `sshs_legacy_hash` computed like sd-scripts (over the `ss_*` metadata only).
    """
    path = Path(path)
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"safetensors metadata must be str → str, got {key!r}: {type(value).__name__}")
    tensors = {
        key: (t.detach().to("cpu", dtype=dtype) if t.is_floating_point() else t.detach().cpu()).contiguous()
        for key, t in state.items()
    }
    meta = dict(metadata)
    ss_only = {k: v for k, v in meta.items() if k.startswith("ss_")}
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = _addnet_hashes(safetensors_save(tensors, ss_only))
    data = safetensors_save(tensors, meta)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path
