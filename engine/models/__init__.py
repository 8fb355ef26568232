"""Base models LoRAs are trained on: find them (diffusers folder, single checkpoint file, Hub id), tell
their family and prediction type, and load their diffusers pipeline."""
from __future__ import annotations

from engine.models.base import BaseModelInfo, load_pipeline, resolve_base_model

__all__ = ["BaseModelInfo", "load_pipeline", "resolve_base_model"]
