"""Find the base model a LoRA is trained on and tell what it is, without loading it.

`[models] sd15` / `[models] sdxl` may name
- a local diffusers folder (model_index.json + component folders),
- a single checkpoint file (`.safetensors`, or a legacy `.ckpt`) as A1111/ComfyUI/Civitai use them,
- a Hugging Face Hub repo id in diffusers layout, downloaded once into huggingface_hub's cache (only the
  files a diffusers pipeline needs: configs, tokenizers, full-precision safetensors weights).

The family is "sd15" for StableDiffusionPipeline models (SD 1.x; a diffusers folder of SD 2.x shares that
pipeline and is treated alike) and "sdxl" for StableDiffusionXLPipeline base models. Anything else (SD3,
Flux, the SDXL refiner, a LoRA file given by mistake…) is refused with a SetupError that says what is
supported. torch, diffusers, safetensors and huggingface_hub are imported where they are used.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.errors import SetupError

Family = Literal["sd15", "sdxl"]
Source = Literal["diffusers", "single_file", "hub"]
Prediction = Literal["epsilon", "v_prediction"]

PREDICTIONS: tuple[str, ...] = ("epsilon", "v_prediction")
PIPELINE_FAMILIES: dict[str, Family] = {
    "StableDiffusionPipeline": "sd15",
    "StableDiffusionXLPipeline": "sdxl",
}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
# Where a single-file checkpoint's component configs (not its weights) come from: diffusers needs them
# to build the pipeline the weights are poured into. Fetched once, cached like any Hub download.
SINGLE_FILE_CONFIG_REPOS: dict[Family, str] = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}
SUPPORTED = ("Stable Diffusion 1.x and SDXL base models, as a diffusers folder (StableDiffusionPipeline / "
             "StableDiffusionXLPipeline), a single .safetensors/.ckpt checkpoint, or a Hugging Face repo id "
             "in diffusers layout")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# The files of a diffusers repo a pipeline needs. Variants (fp16, ema), .bin/.ckpt duplicates, ONNX/Flax
# exports and the root-level single-file checkpoints many repos also ship are left on the Hub.
_HUB_ALLOW = [
    "model_index.json", "*/*.json", "*/*.txt",
    "unet/diffusion_pytorch_model*.safetensors", "vae/diffusion_pytorch_model*.safetensors",
    "text_encoder/model*.safetensors", "text_encoder_2/model*.safetensors",
]
_HUB_IGNORE = ["*.fp16.*", "*.non_ema.*", "*.ema.*", "*.bin", "*.ckpt", "*.msgpack", "*.onnx*", "*.pb"]
_CONFIG_ALLOW = ["model_index.json", "*/*.json", "*/*.txt"]
_FIX = "set [models] sd15 or sdxl to a diffusers folder, a .safetensors checkpoint or a Hugging Face repo id"


@dataclass(frozen=True)
class BaseModelInfo:
    spec: str                 # what the config said
    family: Family
    source: Source
    path: Path | None         # the diffusers folder (also for a Hub id: its cached snapshot) or the file
    prediction: Prediction    # what the UNet predicts: noise (epsilon) or velocity (v_prediction)
    # The picture side the model was made for, where its configs tell (diffusers folders): 512 for SD1.5,
    # 768 for SD 2.x-768, 64 for the toy world. None: the family's usual resolution.
    resolution: int | None = None


def resolve_base_model(spec: str, *, cache_dir: str = "", prediction: str | None = None) -> BaseModelInfo:
    """Tell what `spec` is. `prediction` overrides what the model says (for a single file it is the only
    source: checkpoints rarely record it). Raises SetupError naming the model and what to do."""
    if prediction is not None and prediction not in PREDICTIONS:
        raise SetupError(f"prediction type {prediction!r} is not one of {', '.join(PREDICTIONS)}")
    spec = spec.strip()
    if not spec:
        raise SetupError(f"no base model is configured: {_FIX}")
    path = Path(spec).expanduser()
    if path.is_dir():
        family, found = _inspect_folder(path, spec)
        return BaseModelInfo(spec, family, "diffusers", path, _pick(prediction, found), native_resolution(path))
    if path.is_file():
        family, found = _inspect_single_file(path)
        return BaseModelInfo(spec, family, "single_file", path, _pick(prediction, found))
    if path.suffix.lower() in SINGLE_FILE_SUFFIXES or path.is_absolute() or spec.startswith((".", "~")) \
            or not _REPO_ID.match(spec):
        raise SetupError(f"base model {spec}: no such file or folder, and not a Hugging Face repo id "
                         f"(like {SINGLE_FILE_CONFIG_REPOS['sd15']}): {_FIX}")
    folder = _hub_snapshot(spec, cache_dir, _HUB_ALLOW, _HUB_IGNORE)
    if not (folder / "model_index.json").is_file():
        raise SetupError(f"the Hugging Face repo {spec} is not in diffusers layout (no model_index.json): "
                         "download its .safetensors checkpoint and set [models] sd15 or sdxl to that file")
    family, found = _inspect_folder(folder, spec)
    return BaseModelInfo(spec, family, "hub", folder, _pick(prediction, found), native_resolution(folder))


def _pick(asked: str | None, found: Prediction) -> Prediction:
    return found if asked is None else asked  # type: ignore[return-value]


# --- diffusers folders -----------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SetupError(f"{what}: {path} is not readable JSON ({type(exc).__name__}): "
                         "replace it with the model's own file") from None
    if not isinstance(data, dict):
        raise SetupError(f"{what}: {path} is not a JSON object: replace it with the model's own file")
    return data


def _inspect_folder(folder: Path, spec: str) -> tuple[Family, Prediction]:
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise SetupError(f"base model {spec}: the folder {folder} has no model_index.json, so it is not a "
                         f"diffusers pipeline. Supported: {SUPPORTED}")
    index = _read_json(index_path, f"base model {spec}")
    class_name = index.get("_class_name")
    family = PIPELINE_FAMILIES.get(class_name) if isinstance(class_name, str) else None
    if family is None:
        raise SetupError(f"base model {spec} is a {class_name or 'pipeline of unknown type'}, which lorabake "
                         f"cannot train LoRAs for. Supported: {SUPPORTED}")
    scheduler_config = folder / "scheduler" / "scheduler_config.json"
    found = "epsilon"
    if scheduler_config.is_file():
        found = _read_json(scheduler_config, f"base model {spec}").get("prediction_type") or "epsilon"
    if found not in PREDICTIONS:
        raise SetupError(f"base model {spec} predicts {found!r} (scheduler/scheduler_config.json); lorabake "
                         f"trains {' or '.join(PREDICTIONS)} models only")
    return family, found


def native_resolution(folder: Path) -> int | None:
    """The UNet's latent side times the VAE's downscaling (2 per encoder block after the first), or None
    when the configs do not say."""
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
        side, blocks = unet["sample_size"], len(vae["block_out_channels"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if isinstance(side, list):   # some configs give (height, width)
        side = side[0]
    return int(side) * 2 ** (blocks - 1) if isinstance(side, int) and side > 0 and blocks > 0 else None


# --- single checkpoint files -----------------------------------------------------------------------


def _checkpoint_keys(path: Path) -> list[str]:
    """The state-dict key names, without reading the tensors: safetensors keeps them in its header; a
    zip-format .ckpt is opened memory-mapped with the safe (weights-only) unpickler."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return list(f.keys())
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError
            raise SetupError(f"base model {path} is not a readable .safetensors file ({_first_line(exc)}): "
                             "download it again") from None
    if suffix == ".ckpt":
        import torch

        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # noqa: BLE001 - pickle and zip errors of every kind
            raise SetupError(f"base model {path} could not be read as a .ckpt ({_first_line(exc)}); .ckpt "
                             "files may hold pickled code, which is never run: use the model's .safetensors "
                             "file instead") from None
        if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
            data = data["state_dict"]
        if not isinstance(data, dict):
            raise SetupError(f"base model {path} holds no state dict: use the model's .safetensors file")
        return [str(key) for key in data]
    raise SetupError(f"base model {path} is a {suffix or 'extension-less'} file; single-file checkpoints must "
                     f"be .safetensors or .ckpt. Supported: {SUPPORTED}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def detect_checkpoint_family(keys: list[str], name: str) -> tuple[Family, Prediction]:
    """Family from the original (LDM/SGM) key names, as A1111 and ComfyUI tell them apart."""
    key_set = set(keys)
    has = lambda prefix: any(key.startswith(prefix) for key in keys)  # noqa: E731
    # Some v-prediction checkpoints (e.g. NoobAI v-pred) carry an empty "v_pred" marker tensor.
    found: Prediction = "v_prediction" if "v_pred" in key_set else "epsilon"
    if has("lora_unet_") or has("lora_te") or any(".lora_down." in key or "lora_A" in key for key in keys[:200]):
        raise SetupError(f"base model {name} is a LoRA, not a base model: set [models] sd15 or sdxl to the checkpoint "
                         "the LoRA was made for")
    if not has("model.diffusion_model."):
        other = " (it looks like a single diffusers component)" if has("down_blocks.") else ""
        raise SetupError(f"base model {name} is not a Stable Diffusion checkpoint{other}: no "
                         f"model.diffusion_model.* keys. Supported: {SUPPORTED}")
    if has("model.diffusion_model.joint_blocks.") or has("model.diffusion_model.double_blocks.") \
            or has("double_blocks.") or has("model.diffusion_model.x_embedder."):
        raise SetupError(f"base model {name} is an SD3/Flux-type checkpoint, which lorabake cannot train "
                         f"LoRAs for. Supported: {SUPPORTED}")
    if has("conditioner.embedders.1."):
        return "sdxl", found
    if has("conditioner.embedders.0."):
        raise SetupError(f"base model {name} looks like the SDXL refiner (one OpenCLIP text encoder only), "
                         f"which LoRAs are not trained on. Supported: {SUPPORTED}")
    if has("cond_stage_model.transformer."):
        return "sd15", found
    if has("cond_stage_model.model."):
        raise SetupError(f"base model {name} is a Stable Diffusion 2.x single-file checkpoint, which is not "
                         "supported as a single file: use its diffusers folder or Hub repo id instead")
    raise SetupError(f"base model {name}: its text encoder keys match neither SD 1.x "
                     f"(cond_stage_model.transformer.*) nor SDXL (conditioner.embedders.*). Supported: {SUPPORTED}")


def _inspect_single_file(path: Path) -> tuple[Family, Prediction]:
    return detect_checkpoint_family(_checkpoint_keys(path), str(path))


# --- the Hub -----------------------------------------------------------------------------------------


def _hub_snapshot(repo_id: str, cache_dir: str, allow: list[str], ignore: list[str],
                  what: str = "the base model") -> Path:
    """The cached snapshot first (no network call at all once downloaded), else download it."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    cache = cache_dir or None
    manual = (f"run `hf download {repo_id}` on a machine with internet and copy the folder here, then set "
              "[models] sd15 or sdxl to that folder")
    try:
        try:
            folder = Path(snapshot_download(repo_id, cache_dir=cache, allow_patterns=allow,
                                            ignore_patterns=ignore, local_files_only=True))
            if (folder / "model_index.json").is_file():
                return folder
        except LocalEntryNotFoundError:
            pass
        return Path(snapshot_download(repo_id, cache_dir=cache, allow_patterns=allow, ignore_patterns=ignore))
    except GatedRepoError:
        raise SetupError(f"the Hugging Face repo {repo_id} is gated: accept its licence on huggingface.co and "
                         "log in on this machine (`hf auth login` or HF_TOKEN), or " + manual) from None
    except RepositoryNotFoundError:
        raise SetupError(f"Hugging Face has no public repo {repo_id} (misspelt, private or gated): check "
                         f"[models] sd15 / sdxl, or {manual}") from None
    except HFValidationError:
        raise SetupError(f"{repo_id!r} is not a valid Hugging Face repo id: {_FIX}") from None
    except (OSError, ValueError) as exc:
        # Network failures (and offline mode) surface as LocalEntryNotFoundError / connection errors.
        why = "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else f"no internet? {_first_line(exc)}"
        raise SetupError(f"could not download {what} {repo_id} ({why}): {manual}") from None


# --- loading -----------------------------------------------------------------------------------------


def load_pipeline(info: BaseModelInfo, *, dtype: Any, device: str = "cpu", config: str | Path | None = None,
                  cache_dir: str = "") -> Any:
    """The diffusers pipeline (StableDiffusionPipeline / StableDiffusionXLPipeline) in `dtype` on `device`,
    with its scheduler set to `info.prediction`. The safety checker is never loaded.

    A single file needs the component configs of its family's diffusers repo (`config`: a folder or repo
    id; default SINGLE_FILE_CONFIG_REPOS, fetched once and cached — a few kB, no weights). In a warm worker
    the last model loaded is handed out again (engine.models.warm)."""
    from engine.models import warm

    key = (info.spec, str(info.path), info.family, info.prediction, info.source, str(dtype), str(device),
           str(config), cache_dir)
    return warm.pipeline(key, lambda: _load_pipeline(info, dtype=dtype, device=device, config=config,
                                                     cache_dir=cache_dir))


def _load_pipeline(info: BaseModelInfo, *, dtype: Any, device: str, config: str | Path | None,
                   cache_dir: str) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if info.family == "sdxl" else StableDiffusionPipeline
    # Never loaded, never imported: the safety checker, and the image processor and image encoder that only
    # it and IP-Adapters use (a job draws from text and trains on its own pictures).
    extra: dict[str, Any] = {"feature_extractor": None, "image_encoder": None}
    if info.family == "sd15":
        extra.update(safety_checker=None, requires_safety_checker=False)
    if info.path is None:
        raise SetupError(f"base model {info.spec} has no local files: resolve it with resolve_base_model first")
    try:
        if info.source == "single_file":
            config_folder = _single_file_config(info.family, config, cache_dir)
            pipeline = cls.from_single_file(str(info.path), config=str(config_folder), dtype=dtype,
                                            local_files_only=True, **extra)
        else:
            pipeline = cls.from_pretrained(str(info.path), dtype=dtype, local_files_only=True, **extra)
    except SetupError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise SetupError(f"base model {info.spec} could not be loaded ({_first_line(exc)}): check that its "
                         "files are complete (delete a half-downloaded Hub cache folder to fetch it again)") from None
    if pipeline.scheduler.config.get("prediction_type", "epsilon") != info.prediction:
        pipeline.scheduler = pipeline.scheduler.__class__.from_config(pipeline.scheduler.config,
                                                                      prediction_type=info.prediction)
    return pipeline.to(device)


def _single_file_config(family: Family, config: str | Path | None, cache_dir: str) -> Path:
    if config is not None and Path(config).expanduser().is_dir():
        return Path(config).expanduser()
    repo_id = str(config) if config is not None else SINGLE_FILE_CONFIG_REPOS[family]
    return _hub_snapshot(repo_id, cache_dir, _CONFIG_ALLOW, [],
                        what="the component configs a single-file checkpoint is loaded with, from")
