"""The published SD1.5 and SDXL-base architectures, as configs (the values that differ from the libraries'
defaults in each model folder's config.json), and the models built from them on PyTorch's `meta` device:
shapes and module names without weights, memory or a download. Benches count on them; tests check names.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

# stable-diffusion-v1-5: unet/, vae/, text_encoder/ config.json.
SD15_UNET = {"sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8,
             "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
             "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
             "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}
SD15_VAE = {"block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4, "layers_per_block": 2, "latent_channels": 4,
            "sample_size": 512}
SD15_TEXT = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
             "num_hidden_layers": 12, "max_position_embeddings": 77, "projection_dim": 768}
# stabilityai/stable-diffusion-xl-base-1.0: unet/, text_encoder/, text_encoder_2/ config.json.
SDXL_UNET = {"sample_size": 128, "cross_attention_dim": 2048, "attention_head_dim": [5, 10, 20],
             "block_out_channels": [320, 640, 1280], "layers_per_block": 2, "transformer_layers_per_block": [1, 2, 10],
             "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
             "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
             "projection_class_embeddings_input_dim": 2816}
SDXL_TEXT = {**SD15_TEXT, "hidden_act": "quick_gelu"}
SDXL_TEXT_2 = {"vocab_size": 49408, "hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20,
               "num_hidden_layers": 32, "max_position_embeddings": 77, "projection_dim": 1280, "hidden_act": "gelu"}
UNETS = {"sd15": SD15_UNET, "sdxl": SDXL_UNET}
TEXT_ENCODERS = {"sd15": [SD15_TEXT], "sdxl": [SDXL_TEXT, SDXL_TEXT_2]}


def meta_unet(family: str, dtype: torch.dtype = torch.float32) -> Any:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**UNETS[family]).to(dtype)


def meta_text_encoders(family: str) -> list[Any]:
    """The family's text encoders in pipeline order (SDXL's second one with its projection, as pipelines load it)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    configs = TEXT_ENCODERS[family]
    with torch.device("meta"):
        return [(CLIPTextModelWithProjection if i == 1 else CLIPTextModel)(CLIPTextConfig(**config))
                for i, config in enumerate(configs)]


def write_random_sd15(folder: Path, seed: int = 0) -> Path:
    """An SD1.5 diffusers folder with the published architecture and random weights (PyTorch's default
    initialisation), saved in fp16 (about 2 GB): for benchmarks whose time depends on the real shapes. It
    draws nothing meaningful; its tokenizer is the tiny models' byte-level CLIP vocabulary."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from engine.devtools.tiny_models import write_clip_tokenizer

    write_clip_tokenizer(folder / "tokenizer")
    torch.manual_seed(seed)
    pipeline = StableDiffusionPipeline(
        vae=AutoencoderKL(**SD15_VAE, scaling_factor=0.18215), text_encoder=CLIPTextModel(CLIPTextConfig(**SD15_TEXT)),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"), unet=UNet2DConditionModel(**SD15_UNET),
        scheduler=PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False),
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False)
    pipeline.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    shutil.rmtree(folder / "tokenizer")
    write_clip_tokenizer(folder / "tokenizer")
    return folder
