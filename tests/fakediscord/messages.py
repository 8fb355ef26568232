"""Every message the bot created, its edit history, and the files behind its attachments."""

from __future__ import annotations

import copy
import datetime as dt
import mimetypes
from typing import Any, Callable, NamedTuple
from urllib.parse import quote

from .limits import Problem
from .payloads import SnowflakeDict, Snowflakes
from .waiting import Waiters

EPHEMERAL = 1 << 6
LOADING = 1 << 7
# Kept on the stored dicts for tests, never sent to the bot.
FAKE_ONLY_KEYS = ("interaction_id", "allowed_mentions")
EDITABLE_KEYS = ("content", "embeds", "components", "tts", "poll", "message_reference", "allowed_mentions")


class Upload(NamedTuple):
    """One ``files[n]`` part of a multipart request."""

    index: int
    filename: str
    data: bytes


def public(message: dict[str, Any]) -> dict[str, Any]:
    """The message as Discord would send it to the bot."""
    return {key: value for key, value in message.items() if key not in FAKE_ONLY_KEYS}


class MessageStore:
    def __init__(self, snowflake: Snowflakes, base_url: Callable[[], str], utcnow: Callable[[], dt.datetime]) -> None:
        self._snowflake = snowflake
        self._base_url = base_url
        self._utcnow = utcnow
        self.messages: SnowflakeDict = SnowflakeDict()
        self.history: SnowflakeDict = SnowflakeDict()
        self.deleted: SnowflakeDict = SnowflakeDict()
        self.files: dict[tuple[str, str], bytes] = {}
        self.hosted: dict[str, tuple[bytes, str]] = {}
        self.waiters = Waiters()

    def host(
        self, channel_id: int | str, filename: str, data: bytes, content_type: str | None = None
    ) -> dict[str, Any]:
        """Serves ``data`` under a CDN-like URL and returns its attachment object."""
        attachment = self._attachment(channel_id, filename, data, content_type)
        self.hosted[attachment["id"]] = (data, attachment["content_type"])
        return attachment

    def _attachment(
        self, channel_id: int | str, filename: str, data: bytes, content_type: str | None
    ) -> dict[str, Any]:
        attachment_id = self._snowflake()
        url = f"{self._base_url()}/attachments/{channel_id}/{attachment_id}/{quote(filename)}"
        return {
            "id": attachment_id,
            "filename": filename,
            "size": len(data),
            "url": url,
            "proxy_url": url,
            "content_type": content_type or mimetypes.guess_type(filename)[0] or "application/octet-stream",
        }

    def skeleton(self, channel_id: int | str, author: dict[str, Any], **fields: Any) -> dict[str, Any]:
        message = {
            "id": self._snowflake(),
            "channel_id": str(channel_id),
            "author": author,
            "content": "",
            "timestamp": self._utcnow().isoformat(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "components": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
        }
        message.update(fields)
        return message

    def render(
        self, base: dict[str, Any], payload: dict[str, Any], uploads: list[Upload]
    ) -> tuple[dict[str, Any], list[tuple[dict[str, Any], bytes]], list[Problem]]:
        """``base`` with ``payload`` applied, the new files to host and any problems; nothing is stored yet."""
        message = copy.deepcopy(base)
        for key in EDITABLE_KEYS:
            if key in payload:
                message[key] = payload[key]
        for key, empty in (("content", ""), ("embeds", []), ("components", [])):
            if message.get(key) is None:
                message[key] = empty
        # Ephemerality is fixed when a message is created; any write turns a "thinking" message into a real one.
        flags = payload["flags"] if payload.get("flags") is not None else base["flags"]
        message["flags"] = (base["flags"] & EPHEMERAL) | (flags & ~(EPHEMERAL | LOADING))
        pending = {upload.index: upload for upload in uploads}
        new_files: list[tuple[dict[str, Any], bytes]] = []
        problems: list[Problem] = []

        def attach(upload: Upload) -> dict[str, Any]:
            # Hosted only by commit(), once the whole request has passed the limits.
            attachment = self._attachment(message["channel_id"], upload.filename, upload.data, None)
            new_files.append((attachment, upload.data))
            return attachment

        if "attachments" in payload:
            kept = {attachment["id"]: attachment for attachment in base["attachments"]}
            message["attachments"] = []
            for number, entry in enumerate(payload["attachments"] or []):
                key = entry.get("id")
                if str(key) in kept:
                    message["attachments"].append(kept[str(key)])
                elif isinstance(key, (int, str)) and str(key).isdigit() and int(key) in pending:
                    message["attachments"].append(attach(pending.pop(int(key))))
                else:
                    problems.append((f"attachments.{number}.id", f"unknown attachment {key!r}"))
        message["attachments"] += [attach(upload) for upload in pending.values()]
        return message, new_files, problems

    def commit(self, message: dict[str, Any], new_files: list[tuple[dict[str, Any], bytes]]) -> dict[str, Any]:
        """Stores a new message or an edit of a stored one, and wakes up whoever waits for it."""
        for attachment, data in new_files:
            self.hosted[attachment["id"]] = (data, attachment["content_type"])
            self.files[(message["id"], attachment["filename"])] = data
        if message["id"] in self.messages:
            message["edited_timestamp"] = self._utcnow().isoformat()
        self.messages[message["id"]] = message
        self.history.setdefault(message["id"], []).append(copy.deepcopy(message))
        self.waiters.notify(message)
        return message

    def delete(self, message_id: int | str) -> dict[str, Any]:
        message = self.messages.pop(message_id)
        self.deleted[message["id"]] = message
        return message
