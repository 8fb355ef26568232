"""The base pipeline, loaded once, rendering reg pictures a batch at a time.

Picture i looks the same whether it was rendered in a batch of 4 or alone after a resume: each picture
has its own seeded generator (engine.models.inference.draw)."""
from __future__ import annotations

import io

import numpy as np

from engine.models import resolve_base_model
from engine.models.inference import draw, load_inference_pipeline, preferred_device, to_image
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

        try:
            images = draw(self.pipeline, {"prompt": [spec.prompt] * len(seeds),
                                          "negative_prompt": [spec.negative_prompt] * len(seeds)},
                          seeds, device=self.device, steps=spec.steps, guidance=spec.guidance, width=spec.width,
                          height=spec.height)
        except torch.cuda.OutOfMemoryError:
            raise RenderFailed(f"the GPU ran out of memory rendering {len(seeds)} pictures of "
                               f"{spec.width}×{spec.height} at once: lower [reg] batch_size (now "
                               f"{spec.batch_size}) and ask again; finished pictures are kept") from None
        if not np.isfinite(images).all():
            # fp16 overflow gives NaN latents, which decode to black pictures: never keep those.
            raise RenderFailed("the base model produced broken (NaN, black) pictures: its VAE overflows in half "
                               "precision; use a checkpoint with an fp16-safe VAE")
        return [_png(array) for array in images]


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    to_image(array).save(buffer, "PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return buffer.getvalue()
