"""What the UNet is conditioned on besides the noisy latents, one class per model family.

- SD 1.x (`SD15Conditioning`): one CLIP text encoder; the hidden states `clip_skip` layers from the end,
  through the final layer norm (A1111's and sd-scripts' clip skip).
- SDXL (`SDXLConditioning`), as sd-scripts' sdxl_train_network does it: the penultimate hidden states of
  both encoders concatenated (no final layer norm; clip skip does not apply), the pooled projection of the
  second encoder as `text_embeds`, and per-sample size/crop `time_ids` (data.sdxl_time_ids).

Both share the interface the training step uses: `encoders` (to freeze / add LoRA to), `embed(captions)`
and `unet_kwargs(embedding, placements, dtype)`. With `cache=True` (text encoders frozen, captions fixed)
embeddings are computed once per caption text and kept on the CPU.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engine.training import data


@dataclass(frozen=True)
class TextEmbedding:
    hidden: torch.Tensor                 # (batch, tokens, cross-attention dim)
    pooled: torch.Tensor | None = None   # (batch, projection dim): SDXL only


def _token_ids(tokenizer: Any, captions: list[str], device: str) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)


class TextConditioning:
    """The common part: caching and batching. Subclasses say how captions become embeddings."""

    family = ""

    def __init__(self, encoders: Sequence[torch.nn.Module], device: str, cache: bool) -> None:
        self.encoders = tuple(encoders)
        self.device = device
        self.cache = data.KeyedCache() if cache else None

    def encode(self, captions: list[str]) -> TextEmbedding:
        raise NotImplementedError

    def unet_kwargs(self, embedding: TextEmbedding, placements: Sequence[data.Placement],
                    dtype: torch.dtype) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def cache_hits(self) -> int:
        return self.cache.hits if self.cache is not None else 0

    def embed(self, captions: list[str], *, grad: bool) -> TextEmbedding:
        """The batch's embedding; `grad` when the text encoders are being trained."""
        if self.cache is None:
            with torch.set_grad_enabled(grad):
                return self.encode(captions)
        parts = [self.cache.get(caption, lambda c=caption: self._encode_one(c)) for caption in captions]
        pooled = [p.pooled for p in parts]
        return TextEmbedding(
            torch.stack([p.hidden for p in parts]).to(self.device),
            None if pooled[0] is None else torch.stack(pooled).to(self.device),  # type: ignore[arg-type]
        )

    def fill(self, captions: Iterable[str]) -> None:
        """Embeds every caption a run will use (cache on), so the text encoders can go before step 1."""
        assert self.cache is not None, "only fixed captions of frozen encoders are embedded ahead"
        for caption in captions:
            self.cache.get(caption, lambda c=caption: self._encode_one(c))

    def _encode_one(self, caption: str) -> TextEmbedding:
        with torch.no_grad():
            one = self.encode([caption])
        return TextEmbedding(one.hidden[0].float().cpu(), None if one.pooled is None else one.pooled[0].float().cpu())


class SD15Conditioning(TextConditioning):
    family = "sd15"

    def __init__(self, pipe: Any, *, clip_skip: int, device: str, cache: bool) -> None:
        super().__init__([pipe.text_encoder], device, cache)
        self.tokenizer, self.clip_skip = pipe.tokenizer, clip_skip

    def encode(self, captions: list[str]) -> TextEmbedding:
        encoder = self.encoders[0]
        ids = _token_ids(self.tokenizer, captions, self.device)
        if self.clip_skip <= 1:
            return TextEmbedding(encoder(ids)[0])
        hidden = encoder(ids, output_hidden_states=True).hidden_states[-self.clip_skip]
        norm = getattr(encoder, "final_layer_norm", None) or encoder.text_model.final_layer_norm
        return TextEmbedding(norm(hidden))

    def unet_kwargs(self, embedding: TextEmbedding, placements: Sequence[data.Placement],
                    dtype: torch.dtype) -> dict[str, Any]:
        return {"encoder_hidden_states": embedding.hidden.to(dtype)}


class SDXLConditioning(TextConditioning):
    family = "sdxl"

    def __init__(self, pipe: Any, *, device: str, cache: bool) -> None:
        super().__init__([pipe.text_encoder, pipe.text_encoder_2], device, cache)
        self.tokenizers = (pipe.tokenizer, pipe.tokenizer_2)

    def encode(self, captions: list[str]) -> TextEmbedding:
        first, second = self.encoders
        out1 = first(_token_ids(self.tokenizers[0], captions, self.device), output_hidden_states=True)
        out2 = second(_token_ids(self.tokenizers[1], captions, self.device), output_hidden_states=True)
        hidden = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
        return TextEmbedding(hidden, out2.text_embeds)

    def unet_kwargs(self, embedding: TextEmbedding, placements: Sequence[data.Placement],
                    dtype: torch.dtype) -> dict[str, Any]:
        time_ids = torch.tensor([data.sdxl_time_ids(p) for p in placements], dtype=dtype, device=self.device)
        assert embedding.pooled is not None
        return {"encoder_hidden_states": embedding.hidden.to(dtype),
                "added_cond_kwargs": {"text_embeds": embedding.pooled.to(dtype), "time_ids": time_ids}}


def for_family(family: str, pipe: Any, *, clip_skip: int, device: str, cache: bool) -> TextConditioning:
    if family == "sdxl":
        return SDXLConditioning(pipe, device=device, cache=cache)
    return SD15Conditioning(pipe, clip_skip=clip_skip, device=device, cache=cache)
