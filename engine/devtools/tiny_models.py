"""Tiny, randomly initialised stand-ins for the real models, written to disk in the real formats.

Tests, the demo and `lorabake dev tiny-models DIR` use them so that the whole pipeline (tagging, reg
images, training, sampling) runs on a CPU in seconds, without the internet, through the very loaders
that real models go through: `StableDiffusionPipeline.from_pretrained`, `CLIPTokenizer.from_pretrained`,
`onnxruntime.InferenceSession`. Shapes follow diffusers' own `get_dummy_components` (DESIGN §4).

torch, diffusers and transformers are imported inside the functions that need them, so writing only
the tagger (or importing this module from the CLI) does not pay for loading torch.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DiffusionPipeline
    from transformers import CLIPTextConfig

# --- CLIP tokenizer --------------------------------------------------------------------------------

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
TEXT_VOCAB_SIZE = 1000  # embedding rows of the tiny text encoders; the tokenizer uses ids 0..513
MODEL_MAX_LENGTH = 77  # SD pipelines pad prompts to the tokenizer's model_max_length


def _bytes_to_unicode() -> list[str]:
    """The 256 printable stand-ins for bytes that byte-level BPE (GPT-2, CLIP) uses, in CLIP's order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    # The other bytes (controls, space…) are shifted to code points 256, 257, … in byte order.
    shifted = [256 + n for n, _ in enumerate(b for b in range(256) if b not in printable)]
    return [chr(c) for c in printable + shifted]


def _clip_vocab() -> dict[str, int]:
    """CLIP's vocabulary with no merges: bytes, bytes ending a word, then the two special tokens.

    Same layout as the real 49408-entry vocabulary (specials last), so BOS = 512 and EOS = PAD = 513.
    Without merges every word is spelled byte by byte, which any prompt survives.
    """
    chars = _bytes_to_unicode()
    tokens = [*chars, *(c + "</w>" for c in chars), BOS_TOKEN, EOS_TOKEN]
    return {token: i for i, token in enumerate(tokens)}


def write_clip_tokenizer(folder: Path, vocab: dict[str, int] | None = None,
                         merges: Sequence[tuple[str, str]] = ()) -> None:
    """Write the files a real SD checkpoint ships in tokenizer/ (no tokenizer.json, like SD1.5's repo):
    by default CLIP's byte vocabulary with no merges; the toy world passes its own vocabulary and merges."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _clip_vocab() if vocab is None else vocab
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                       encoding="utf-8")
    specials = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN, "unk_token": EOS_TOKEN}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2), encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": MODEL_MAX_LENGTH, **specials}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def _text_config(*, projection_dim: int | None = None) -> CLIPTextConfig:
    from transformers import CLIPTextConfig

    vocab = _clip_vocab()
    extra = {} if projection_dim is None else {"projection_dim": projection_dim}
    # The special-token ids must be the tokenizer's: CLIPTextModel pools the hidden state at the first
    # eos_token_id (only the legacy value 2 falls back to argmax of the ids).
    return CLIPTextConfig(
        vocab_size=TEXT_VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=5,
        layer_norm_eps=1e-5,
        hidden_act="gelu",
        bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=vocab[EOS_TOKEN],
        pad_token_id=vocab[EOS_TOKEN],
        **extra,
    )


# --- Stable Diffusion pipelines ---------------------------------------------------------------------


def _tiny_vae(*, scaling_factor: float) -> AutoencoderKL:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=64,
        scaling_factor=scaling_factor,
    )


def save_pipeline(pipeline: DiffusionPipeline, folder: Path, tokenizer_folders: tuple[str, ...],
                  write_tokenizer: Callable[[Path], object] = write_clip_tokenizer) -> None:
    """Save in safetensors, then swap in hand-written tokenizer files for the generated ones.

    `save_pretrained` would write tokenizer.json plus a config with loader leftovers (`is_local`…);
    the hand-written files are what real checkpoints ship and they load through the same class.
    """
    pipeline.save_pretrained(folder, safe_serialization=True)
    for name in tokenizer_folders:
        shutil.rmtree(folder / name)
        write_tokenizer(folder / name)


def _write_sd15(folder: Path, seed: int) -> None:
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    write_clip_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    # Seed before each model so that one model's shape cannot shift another's weights.
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    torch.manual_seed(seed + 1)
    vae = _tiny_vae(scaling_factor=0.18215)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config())
    # The scheduler SD1.5's repo ships; training code builds its DDPMScheduler from this same config.
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    save_pipeline(pipeline, folder, ("tokenizer",))


def _write_sdxl(folder: Path, seed: int) -> None:
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    write_clip_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        # 6 size/crop numbers × 8 time-embedding dims + text_encoder_2's 32-dim pooled projection.
        projection_class_embeddings_input_dim=80,
        # Both encoders' hidden states, concatenated: 32 + 32.
        cross_attention_dim=64,
    )
    torch.manual_seed(seed + 1)
    vae = _tiny_vae(scaling_factor=0.13025)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config())
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(projection_dim=32))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipeline = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
        image_encoder=None,
        feature_extractor=None,
        # Not saved in the config; False keeps saving from needing invisible-watermark.
        add_watermarker=False,
    )
    save_pipeline(pipeline, folder, ("tokenizer", "tokenizer_2"))


# --- WD14-style tagger ------------------------------------------------------------------------------

TAGGER_SIZE = 448  # WD taggers take 448×448 NHWC BGR float32 in 0..255
_POOL_GRID = 8  # the tiny tagger sees the image as an 8×8 grid of mean colours
_RATING_TAG_ID = 9999999  # the real selected_tags.csv gives all four rating rows this id

_RATINGS = ("general", "sensitive", "questionable", "explicit")
_GENERAL_TAGS = (
    "1boy", "solo", "male_focus", "1girl", "looking_at_viewer", "smile", "short_hair", "long_hair",
    "black_hair", "brown_hair", "blonde_hair", "brown_eyes", "blue_eyes", "open_mouth", "closed_mouth",
    "simple_background", "white_background", "shirt", "white_shirt", "jacket", "upper_body", "portrait",
    "mature_male", "muscular", "muscular_male", "pectorals", "large_pectorals", "manly", "facial_hair",
    "beard", "stubble", "glasses", "hat", "teeth", "grin", ":d", "^_^", ">_<", "closed_eyes", "outdoors",
    "sky", "day", "monochrome", "greyscale", "virtual_youtuber", "parody", "style_parody",
    "official_alternate_costume", "alternate_costume",
)  # fmt: skip
_CHARACTER_TAGS = ("hatsune_miku", "kirito", "gojou_satoru", "uzumaki_naruto", "artoria_pendragon_(fate)")


def _tag_rows() -> list[tuple[int, str, int, int]]:
    """The rows of the tiny tagger's selected_tags.csv: (tag_id, name, category, count), output order."""
    rows = [(_RATING_TAG_ID, name, 9, 800_000 // (i + 1)) for i, name in enumerate(_RATINGS)]
    named = [(name, 0) for name in _GENERAL_TAGS] + [(name, 4) for name in _CHARACTER_TAGS]
    # Made-up ids and counts; counts fall, as in the real file, which is sorted by count.
    rows += [(100_000 + i, name, cat, 4_000_000 // (i + 1)) for i, (name, cat) in enumerate(named)]
    return rows


def _write_selected_tags(path: Path, rows: list[tuple[int, str, int, int]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["tag_id", "name", "category", "count"])
        writer.writerows(rows)


def _tagger_onnx(categories: list[int], seed: int, batch: int | None) -> bytes:
    """A real, tiny function of the image: 8×8 mean colours → linear layer → sigmoid per tag."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    num_tags = len(categories)
    features = 3 * _POOL_GRID * _POOL_GRID
    # Scaled so that a plain picture gets roughly a third of the general tags over the 0.35 threshold
    # and a character tag over 0.85 only now and then, as with a real tagger.
    weight = rng.normal(0.0, 0.4, size=(features, num_tags))
    bias = rng.normal(-1.5, 0.5, size=num_tags) - 1.0 * (np.array(categories) == 4)
    # The layer is meant to act on colours centred on 0 (x / 255 - 0.5); folding that into the weights
    # saves the graph a Mul and a Sub.
    folded_weight = (weight / 255.0).astype(np.float32)
    folded_bias = (bias - 0.5 * weight.sum(axis=0)).astype(np.float32)

    kernel = TAGGER_SIZE // _POOL_GRID
    nodes = [
        helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("AveragePool", ["nchw"], ["pooled"], kernel_shape=[kernel] * 2, strides=[kernel] * 2),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "weight", "bias"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["output"]),
    ]
    batch_dim: int | str = "N" if batch is None else batch
    image = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch_dim, TAGGER_SIZE, TAGGER_SIZE, 3])
    probabilities = helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch_dim, num_tags])
    initializers = [numpy_helper.from_array(folded_weight, "weight"), numpy_helper.from_array(folded_bias, "bias")]
    graph = helper.make_graph(nodes, "tiny_wd_tagger", [image], [probabilities], initializers)
    # Pin opset and IR version: the installed onnx would stamp its newest, which older runtimes refuse.
    model = helper.make_model(graph, producer_name="lorabake", opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_tiny_tagger(folder: Path, *, seed: int = 0, batch: int | None = None) -> Path:
    """Write model.onnx + selected_tags.csv into `folder` and return it.

    `batch=None` gives a dynamic batch dimension (like WD v3 taggers); `batch=1` a fixed one (like v2).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rows = _tag_rows()
    _write_selected_tags(folder / "selected_tags.csv", rows)
    (folder / "model.onnx").write_bytes(_tagger_onnx([category for _, _, category, _ in rows], seed, batch))
    return folder


# --- everything -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyModelPaths:
    root: Path
    sd15: Path  # diffusers folder: StableDiffusionPipeline.from_pretrained works offline
    sdxl: Path  # diffusers folder: StableDiffusionXLPipeline.from_pretrained works offline
    tagger: Path  # model.onnx + selected_tags.csv


def write_tiny_models(root: Path, *, seed: int = 0, tagger_batch: int | None = None) -> TinyModelPaths:
    """Write tiny SD1.5, SDXL and tagger models under `root` (sd15/, sdxl/, tagger/).

    The same seed writes byte-identical files. Existing model folders are replaced, so files of an
    earlier or half-finished run cannot linger among the new ones.
    """
    root = Path(root)
    paths = TinyModelPaths(root=root, sd15=root / "sd15", sdxl=root / "sdxl", tagger=root / "tagger")
    for folder in (paths.sd15, paths.sdxl, paths.tagger):
        shutil.rmtree(folder, ignore_errors=True)
    _write_sd15(paths.sd15, seed)
    _write_sdxl(paths.sdxl, seed)
    write_tiny_tagger(paths.tagger, seed=seed, batch=tagger_batch)
    return paths
