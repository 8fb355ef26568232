"""The base pipeline, loaded once, rendering reg pictures a batch at a time.

Each picture gets its own seeded generator (diffusers draws each latent, and each ancestral sampler's
noise, from the generator of its own batch row), so picture i looks the same whether it was rendered
in a batch of 4 or alone after a resume; on a GPU, a different batch make-up may change the last bit
of some pixels (kernels pick other summation orders), never the picture."""
from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from engine.models import resolve_base_model
from engine.models.inference import load_inference_pipeline, preferred_device
from engine.reg.spec import RegSpec

# Same encoding as intake's stored pictures: lossless, fast, no metadata (the manifest holds the settings).
_PNG_COMPRESS_LEVEL = 1


class RenderFailed(Exception):
    """A failure the member or the server owner can act on; the message says what to do."""


class RegRenderer:
    def __init__(self, spec: RegSpec, device: str | None = None) -> None:
        self.device = device or preferred_device()
        info = resolve_base_model(spec.base_model, prediction=spec.prediction)
        self.family = info.family
        self.pipeline = load_inference_pipeline(info, device=self.device)

    def render(self, spec: RegSpec, seeds: list[int]) -> list[bytes]:
        """PNG bytes of one picture per seed, in order."""
        import torch

        generators = [torch.Generator(self.device).manual_seed(seed) for seed in seeds]
        try:
            with torch.inference_mode():
                result = self.pipeline(
                    prompt=[spec.prompt] * len(seeds), negative_prompt=[spec.negative_prompt] * len(seeds),
                    num_inference_steps=spec.steps, guidance_scale=spec.guidance, width=spec.width,
                    height=spec.height, generator=generators, output_type="np")
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            raise RenderFailed(f"the GPU ran out of memory rendering {len(seeds)} pictures of "
                               f"{spec.width}×{spec.height} at once: lower [reg] batch_size (now "
                               f"{spec.batch_size}) and ask again; finished pictures are kept") from None
        images: Any = result.images
        if not np.isfinite(images).all():
            # fp16 overflow gives NaN latents, which decode to black pictures: never keep those.
            raise RenderFailed("the base model produced broken (NaN, black) pictures: its VAE overflows in half "
                               "precision; use a checkpoint with an fp16-safe VAE")
        return [_png(array) for array in images]


def _png(array: np.ndarray) -> bytes:
    pixels = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return buffer.getvalue()
