"""Small Discord-shaped JSON builders. Snowflakes are strings in Discord's JSON, so they are here too."""

from __future__ import annotations

import base64
import json
import secrets
import time
from typing import Any

from aiohttp import web

DISCORD_EPOCH_MS = 1_420_070_400_000


class Snowflakes:
    """Increasing snowflakes with real timestamps, so discord.py's ``created_at`` stays meaningful."""

    def __init__(self) -> None:
        self._last = 0

    def __call__(self) -> str:
        value = max((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22, self._last + 1)
        self._last = value
        return str(value)


class SnowflakeDict(dict):
    """A dict keyed by snowflake strings that also accepts int keys (discord.py hands out ints)."""

    def __getitem__(self, key: Any) -> Any:
        return super().__getitem__(str(key))

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(str(key), value)

    def __contains__(self, key: object) -> bool:
        return super().__contains__(str(key))

    def get(self, key: Any, default: Any = None) -> Any:
        return super().get(str(key), default)

    def pop(self, key: Any, *default: Any) -> Any:
        return super().pop(str(key), *default)


def bot_token(user_id: int) -> str:
    """A token shaped like Discord's: base64(user id), a timestamp part and an HMAC part."""
    head = base64.urlsafe_b64encode(str(user_id).encode()).decode().rstrip("=")
    return f"{head}.{secrets.token_urlsafe(4)}.{secrets.token_urlsafe(28)}"


def json_response(data: Any, status: int = 200) -> web.Response:
    # discord.py parses a body as JSON only when Content-Type is exactly "application/json";
    # web.json_response and text= bodies would append "; charset=utf-8".
    return web.Response(status=status, body=json.dumps(data).encode(), content_type="application/json")


def user(user_id: int, name: str, *, bot: bool = False) -> dict[str, Any]:
    return {
        "id": str(user_id),
        "username": name,
        "global_name": None if bot else name,
        "discriminator": "0",
        "avatar": None,
        "bot": bot,
        "public_flags": 0,
        "flags": 0,
    }


def role(role_id: int, name: str, permissions: int, position: int, *, managed: bool = False) -> dict[str, Any]:
    return {
        "id": str(role_id),
        "name": name,
        "permissions": str(permissions),
        "position": position,
        "color": 0,
        "colors": {"primary_color": 0},
        "hoist": False,
        "managed": managed,
        "mentionable": False,
        "flags": 0,
    }


def text_channel(channel_id: int, guild_id: int, name: str, position: int) -> dict[str, Any]:
    return {
        "id": str(channel_id),
        "type": 0,
        "guild_id": str(guild_id),
        "name": name,
        "position": position,
        "permission_overwrites": [],
        "nsfw": False,
        "parent_id": None,
        "topic": None,
        "rate_limit_per_user": 0,
        "last_message_id": None,
    }
