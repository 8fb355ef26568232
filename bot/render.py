"""Text that fits Discord's limits (embed title 256, description 4096, field value 1024, message 2000)."""
from __future__ import annotations


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
