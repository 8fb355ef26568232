"""Reading what the bot sent, the way a member sees it."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any


def text_of(message: dict[str, Any] | None) -> str:
    """Everything a member reads in a message: content, embed titles, descriptions, fields, footers."""
    if not message:
        return ""
    parts = [message.get("content") or ""]
    for embed in message.get("embeds") or []:
        parts += [embed.get("title", ""), embed.get("description", "")]
        parts += [f"{field['name']}: {field['value']}" for field in embed.get("fields", [])]
        parts.append((embed.get("footer") or {}).get("text", ""))
    return "\n".join(part for part in parts if part)


def custom_ids(message: dict[str, Any] | None) -> list[str]:
    ids: list[str] = []
    for row in (message or {}).get("components") or []:
        ids += [item["custom_id"] for item in row.get("components", []) if "custom_id" in item]
    return ids


def ended(message_id: str) -> Callable[[dict[str, Any]], bool]:
    """A predicate for wait_for_message: job status message `message_id` shows the job has ended."""
    return lambda m: m["id"] == message_id and any(w in text_of(m) for w in ("finished", "failed", "cancelled"))
