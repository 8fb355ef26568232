"""The tiny models load and run through the same public loaders as real models, and are reproducible."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTokenizer

from engine.devtools.tiny_models import TinyModelPaths, write_tiny_models

UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> TinyModelPaths:
    return write_tiny_models(tmp_path_factory.mktemp("tiny"))


def _session(tagger: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(tagger / "model.onnx"), providers=["CPUExecutionProvider"])


def _images() -> np.ndarray:
    """Three 448×448 NHWC float images in 0..255: white, a colour gradient, coloured blocks."""
    white = np.full((448, 448, 3), 255.0, dtype=np.float32)
    ramp = np.linspace(0.0, 255.0, 448, dtype=np.float32)
    grey = np.full((448, 448), 128.0)
    gradient = np.stack([np.tile(ramp, (448, 1)), np.tile(ramp[:, None], (1, 448)), grey], axis=-1)
    blocks = np.kron(np.random.default_rng(0).uniform(0, 255, (8, 8, 3)), np.ones((56, 56, 1)))
    return np.stack([white, gradient, blocks]).astype(np.float32)


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def _tag_rows(tagger: Path) -> list[dict[str, str]]:
    with (tagger / "selected_tags.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_sd15_pipeline_loads_with_specified_shapes_and_generates(paths: TinyModelPaths) -> None:
    pipe = StableDiffusionPipeline.from_pretrained(paths.sd15, local_files_only=True)

    unet, text = pipe.unet.config, pipe.text_encoder.config
    assert list(unet.block_out_channels) == [32, 64]
    assert unet.layers_per_block == 2
    assert unet.cross_attention_dim == 32
    assert list(unet.down_block_types) == ["DownBlock2D", "CrossAttnDownBlock2D"]
    assert list(unet.up_block_types) == ["CrossAttnUpBlock2D", "UpBlock2D"]
    assert list(pipe.vae.config.block_out_channels) == [32, 64]
    assert pipe.vae.config.latent_channels == 4
    assert (text.hidden_size, text.intermediate_size, text.num_attention_heads) == (32, 37, 4)
    assert (text.num_hidden_layers, text.vocab_size) == (5, 1000)
    assert pipe.safety_checker is None

    result = pipe(
        "a photo of XingBar, man",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    assert result.images.shape == (1, 64, 64, 3)
    assert np.isfinite(result.images).all()


def test_sdxl_pipeline_loads_and_generates(paths: TinyModelPaths) -> None:
    pipe = StableDiffusionXLPipeline.from_pretrained(paths.sdxl, local_files_only=True)

    assert pipe.unet.config.addition_embed_type == "text_time"
    assert pipe.unet.config.cross_attention_dim == 64
    assert pipe.text_encoder_2.config.projection_dim == 32

    result = pipe(
        "a photo of XingBar, man",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    assert result.images.shape == (1, 64, 64, 3)
    assert np.isfinite(result.images).all()


@pytest.mark.parametrize("subfolder", ["sd15/tokenizer", "sdxl/tokenizer", "sdxl/tokenizer_2"])
def test_tokenizer_pads_to_77_with_ids_the_text_encoder_accepts(
    paths: TinyModelPaths, subfolder: str
) -> None:
    tokenizer = CLIPTokenizer.from_pretrained(paths.root / subfolder, local_files_only=True)

    ids = tokenizer("XingBar, man", padding="max_length", max_length=tokenizer.model_max_length).input_ids

    assert tokenizer.model_max_length == 77
    assert len(ids) == 77
    assert max(ids) < 1000
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "xingbar , man"


def test_text_encoder_special_ids_match_the_tokenizer(paths: TinyModelPaths) -> None:
    tokenizer = CLIPTokenizer.from_pretrained(paths.sd15 / "tokenizer", local_files_only=True)
    encoder = CLIPTextModel.from_pretrained(paths.sd15 / "text_encoder", local_files_only=True)
    assert encoder.config.bos_token_id == tokenizer.bos_token_id
    assert encoder.config.eos_token_id == tokenizer.eos_token_id
    assert encoder.config.pad_token_id == tokenizer.pad_token_id

    ids = tokenizer("a photo of XingBar, man", padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        out = encoder(ids)

    # CLIP pools at the first end-of-text token: only right if the config knows the tokenizer's id.
    first_eos = int((ids[0] == tokenizer.eos_token_id).nonzero()[0])
    assert out.last_hidden_state.shape == (1, 77, 32)
    assert torch.equal(out.pooler_output[0], out.last_hidden_state[0, first_eos])


def test_tagger_takes_a_dynamic_nhwc_batch_and_returns_reproducible_probabilities(
    paths: TinyModelPaths,
) -> None:
    session = _session(paths.tagger)
    [inp] = session.get_inputs()
    [out] = session.get_outputs()
    assert inp.name == "input"
    assert inp.type == "tensor(float)"
    assert isinstance(inp.shape[0], str)  # a named, dynamic batch dimension
    assert inp.shape[1:] == [448, 448, 3]

    images = _images()
    first = session.run([out.name], {inp.name: images})[0]
    again = session.run([out.name], {inp.name: images})[0]

    assert first.shape == (3, len(_tag_rows(paths.tagger)))
    assert ((first >= 0) & (first <= 1)).all()
    assert np.array_equal(first, again)
    assert not np.allclose(first[0], first[1], atol=1e-3)
    assert not np.allclose(first[1], first[2], atol=1e-3)


def test_selected_tags_lists_ratings_first_then_general_and_character_tags(
    paths: TinyModelPaths,
) -> None:
    rows = _tag_rows(paths.tagger)

    assert list(rows[0]) == ["tag_id", "name", "category", "count"]
    assert [(r["name"], r["category"]) for r in rows[:4]] == [
        ("general", "9"),
        ("sensitive", "9"),
        ("questionable", "9"),
        ("explicit", "9"),
    ]
    assert {r["category"] for r in rows[4:]} == {"0", "4"}
    names = {r["name"] for r in rows}
    assert {"long_hair", "1boy", "^_^", ">_<", "virtual_youtuber", "parody"} <= names
    assert len(names) == len(rows)


def test_same_seed_rewrites_identical_files_and_tagger_batch_pins_the_batch(
    paths: TinyModelPaths, tmp_path: Path
) -> None:
    same = write_tiny_models(tmp_path / "same", seed=0)
    other = write_tiny_models(tmp_path / "other", seed=1, tagger_batch=1)

    assert _file_bytes(same.root) == _file_bytes(paths.root)  # weights, configs, tokenizer, tagger
    original = load_file(paths.sd15 / UNET_WEIGHTS)["conv_in.weight"]
    assert not torch.equal(load_file(other.sd15 / UNET_WEIGHTS)["conv_in.weight"], original)

    session = _session(other.tagger)
    assert session.get_inputs()[0].shape == [1, 448, 448, 3]
    assert session.run(None, {"input": _images()[:1]})[0].shape == (1, len(_tag_rows(other.tagger)))
