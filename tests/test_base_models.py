"""Base models are recognised from a diffusers folder, a single checkpoint file or a Hub id, and anything
else is refused with a SetupError that names the model and what is supported. Offline throughout:
single-file *loading* (diffusers' from_single_file) needs real-sized weights and is not exercised here;
detection reads only the key names, which a tiny synthetic file has."""
from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import save_file

from engine.devtools.tiny_models import TinyModelPaths
from engine.errors import SetupError
from engine.models import load_pipeline, resolve_base_model
from engine.models.base import BaseModelInfo, native_resolution
from engine.training.options import preset

SD15_KEYS = [
    "model.diffusion_model.input_blocks.0.0.weight",
    "model.diffusion_model.out.2.weight",
    "first_stage_model.decoder.conv_in.weight",
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
]
SDXL_KEYS = [
    "model.diffusion_model.input_blocks.0.0.weight",
    "model.diffusion_model.label_emb.0.0.weight",
    "first_stage_model.decoder.conv_in.weight",
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
    "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
]


@pytest.fixture(scope="module")
def tiny(tiny_models: TinyModelPaths) -> TinyModelPaths:
    return tiny_models


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"the network was touched: {args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def _checkpoint(path: Path, keys: list[str]) -> Path:
    save_file({key: torch.zeros(1) for key in keys}, str(path))
    return path


def test_native_resolution_comes_from_the_unet_and_vae_configs(tmp_path: Path) -> None:
    def folder(sample_size: object, blocks: int) -> Path:
        root = tmp_path / f"m{sample_size}-{blocks}"
        for name, config in (("unet", {"sample_size": sample_size}), ("vae", {"block_out_channels": [8] * blocks})):
            (root / name).mkdir(parents=True)
            (root / name / "config.json").write_text(json.dumps(config))
        return root

    assert native_resolution(folder(64, 4)) == 512          # SD 1.5
    assert native_resolution(folder(96, 4)) == 768          # SD 2.x-768
    assert native_resolution(folder([128, 128], 4)) == 1024  # (height, width)
    assert native_resolution(folder("x", 4)) is None and native_resolution(tmp_path / "none") is None
    options = preset("sd15", 768)
    assert (options.resolution, options.bucket_min, options.bucket_max, options.bucket_step) == (768, 384, 1536, 96)
    assert preset("sd15", 512) == preset("sd15") and preset("sdxl", None).resolution == 1024


def test_tiny_sd15_folder_is_detected_and_loads(tiny: TinyModelPaths, no_network: None) -> None:
    info = resolve_base_model(str(tiny.sd15))
    # Its own resolution, from its configs: 32 latent px × 2 (two VAE blocks).
    assert info == BaseModelInfo(str(tiny.sd15), "sd15", "diffusers", tiny.sd15, "epsilon", 64)
    pipeline = load_pipeline(info, dtype=torch.float32)
    assert isinstance(pipeline, StableDiffusionPipeline)
    assert pipeline.unet.dtype == torch.float32 and pipeline.safety_checker is None
    assert pipeline.scheduler.config.prediction_type == "epsilon"


def test_tiny_sdxl_folder_is_detected_and_loads(tiny: TinyModelPaths, no_network: None) -> None:
    info = resolve_base_model(f"  {tiny.sdxl}  ")
    assert (info.family, info.source, info.path, info.prediction) == ("sdxl", "diffusers", tiny.sdxl, "epsilon")
    pipeline = load_pipeline(info, dtype=torch.bfloat16)
    assert isinstance(pipeline, StableDiffusionXLPipeline)
    assert pipeline.unet.dtype == torch.bfloat16 and pipeline.text_encoder_2 is not None


def test_v_prediction_from_the_scheduler_config(tiny: TinyModelPaths, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny.sd15, tmp_path / "vpred")
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "prediction_type": "v_prediction"}))
    info = resolve_base_model(str(folder))
    assert info.prediction == "v_prediction"
    assert load_pipeline(info, dtype=torch.float32).scheduler.config.prediction_type == "v_prediction"
    # The argument overrides the folder, and reaches the loaded scheduler.
    forced = resolve_base_model(str(tiny.sd15), prediction="v_prediction")
    assert forced.prediction == "v_prediction"
    assert load_pipeline(forced, dtype=torch.float32).scheduler.config.prediction_type == "v_prediction"
    with pytest.raises(SetupError, match="'sample'"):
        resolve_base_model(str(tiny.sd15), prediction="sample")


def test_single_file_checkpoints_are_detected_from_key_names(tmp_path: Path, no_network: None) -> None:
    sd15 = _checkpoint(tmp_path / "anything-v3.safetensors", SD15_KEYS)
    sdxl = _checkpoint(tmp_path / "pony.safetensors", SDXL_KEYS)
    assert resolve_base_model(str(sd15)) == BaseModelInfo(str(sd15), "sd15", "single_file", sd15, "epsilon")
    info = resolve_base_model(str(sdxl), prediction="v_prediction")
    assert (info.family, info.source, info.prediction) == ("sdxl", "single_file", "v_prediction")
    # A "v_pred" marker key (as NoobAI's v-pred checkpoints carry) is honoured.
    marked = _checkpoint(tmp_path / "noob-vpred.safetensors", [*SDXL_KEYS, "v_pred"])
    assert resolve_base_model(str(marked)).prediction == "v_prediction"
    # A zip-format .ckpt with a Lightning-style {"state_dict": …} wrapper.
    ckpt = tmp_path / "old.ckpt"
    torch.save({"state_dict": {key: torch.zeros(1) for key in SD15_KEYS}, "global_step": 470000}, ckpt)
    assert resolve_base_model(str(ckpt)).family == "sd15"


@pytest.mark.parametrize(("keys", "message"), [
    (["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"], "is a LoRA, not a base model"),
    (["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"], "SD3/Flux"),
    (["model.diffusion_model.input_blocks.0.0.weight", "conditioner.embedders.0.model.ln_final.weight"],
     "SDXL refiner"),
    (["model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.model.ln_final.weight"], "2.x"),
    (["down_blocks.0.resnets.0.conv1.weight"], "single diffusers component"),
])
def test_unsupported_single_files_are_refused(tmp_path: Path, keys: list[str], message: str) -> None:
    path = _checkpoint(tmp_path / "model.safetensors", keys)
    with pytest.raises(SetupError, match=message) as caught:
        resolve_base_model(str(path))
    assert str(path) in str(caught.value)


def test_broken_and_odd_files_are_refused(tmp_path: Path) -> None:
    broken = tmp_path / "half.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(SetupError, match="not a readable .safetensors file"):
        resolve_base_model(str(broken))
    other = tmp_path / "model.bin"
    other.write_bytes(b"x")
    with pytest.raises(SetupError, match=r"must\s+be .safetensors or .ckpt"):
        resolve_base_model(str(other))


def test_missing_path(tmp_path: Path, no_network: None) -> None:
    for spec in (str(tmp_path / "nope.safetensors"), str(tmp_path / "nope"), "./models/nope", "not a repo"):
        with pytest.raises(SetupError, match="no such file or folder") as caught:
            resolve_base_model(spec)
        assert spec in str(caught.value)
    with pytest.raises(SetupError, match="no base model is configured"):
        resolve_base_model("  ")


def test_folder_without_model_index(tmp_path: Path) -> None:
    (tmp_path / "unet").mkdir()
    with pytest.raises(SetupError, match="has no model_index.json, so it is not a diffusers pipeline") as caught:
        resolve_base_model(str(tmp_path))
    assert "StableDiffusionXLPipeline" in str(caught.value)  # says what is supported


@pytest.mark.parametrize("class_name", ["StableDiffusion3Pipeline", "FluxPipeline", "StableDiffusionXLImg2ImgPipeline"])
def test_unsupported_pipeline_class(tmp_path: Path, class_name: str) -> None:
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    with pytest.raises(SetupError, match=f"is a {class_name}, which lorabake cannot train LoRAs for") as caught:
        resolve_base_model(str(tmp_path))
    assert "Stable Diffusion 1.x and SDXL" in str(caught.value)


def test_unreadable_model_index(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text("{oops")
    with pytest.raises(SetupError, match="not readable JSON"):
        resolve_base_model(str(tmp_path))


def test_hub_id_offline_is_a_setup_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read once at import time
    with pytest.raises(SetupError) as caught:
        resolve_base_model("someone/some-sd15-model", cache_dir=str(tmp_path / "hf"))
    message = str(caught.value)
    assert "could not download the base model someone/some-sd15-model (HF_HUB_OFFLINE is set)" in message
    assert "hf download someone/some-sd15-model" in message and "[models] sd15 or sdxl" in message
    # A single file's component configs come from the Hub too: offline and uncached, a SetupError.
    sd15 = _checkpoint(tmp_path / "sd15.safetensors", SD15_KEYS)
    with pytest.raises(SetupError, match="stable-diffusion-v1-5/stable-diffusion-v1-5"):
        load_pipeline(resolve_base_model(str(sd15)), dtype=torch.float32, cache_dir=str(tmp_path / "hf"))


def test_hub_id_served_from_the_cache(tiny: TinyModelPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      no_network: None) -> None:
    """A repo already in the cache resolves with no network at all: lay the tiny SD1.5 out as a cached
    snapshot (huggingface_hub's documented cache layout) and resolve its id."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "hf"
    repo = cache / "models--someone--tiny-sd15"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny.sd15, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    info = resolve_base_model("someone/tiny-sd15", cache_dir=str(cache))
    assert (info.family, info.source, info.path) == ("sd15", "hub", repo / "snapshots" / commit)
    assert isinstance(load_pipeline(info, dtype=torch.float32), StableDiffusionPipeline)
