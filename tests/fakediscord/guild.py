"""The one guild the fake serves: roles, text channels and members, as Discord would describe them."""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable, Iterable

import discord

from . import payloads

EVERYONE_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    read_message_history=True,
    embed_links=True,
    attach_files=True,
    add_reactions=True,
    use_application_commands=True,
).value
DEFAULT_BOT_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    read_message_history=True,
    embed_links=True,
    attach_files=True,
    add_reactions=True,
    use_external_emojis=True,
).value
ALL_PERMISSIONS = discord.Permissions.all().value
ADMINISTRATOR = discord.Permissions(administrator=True).value


def premium_tier_for(upload_limit: int) -> int:
    """The boost tier whose upload limit discord.py's ``Guild.filesize_limit`` reports for ``upload_limit``."""
    if upload_limit >= 100 * 1024 * 1024:
        return 3
    return 2 if upload_limit >= 50 * 1024 * 1024 else 0


class FakeGuild:
    def __init__(self, guild_id: int, owner_id: int, snowflake: Callable[[], str]) -> None:
        self.id = guild_id
        self.owner_id = owner_id
        self.name = "lorabake test guild"
        self._snowflake = snowflake
        # Discord gives @everyone the guild's own id.
        everyone = payloads.role(guild_id, "@everyone", EVERYONE_PERMISSIONS, 0)
        self.roles: dict[int, dict[str, Any]] = {guild_id: everyone}
        self.channels: dict[int, dict[str, Any]] = {}
        self.users: dict[int, dict[str, Any]] = {}
        self.member_roles: dict[int, list[int]] = {}
        self.joined_at: dict[int, str] = {}

    def add_role(
        self, name: str, permissions: int = 0, role_id: int | None = None, *, managed: bool = False
    ) -> dict[str, Any]:
        role_id = role_id or int(self._snowflake())
        self.roles[role_id] = payloads.role(role_id, name, permissions, len(self.roles), managed=managed)
        return self.roles[role_id]

    def add_channel(self, name: str, channel_id: int | None = None) -> dict[str, Any]:
        channel_id = channel_id or int(self._snowflake())
        self.channels[channel_id] = payloads.text_channel(channel_id, self.id, name, len(self.channels))
        return self.channels[channel_id]

    def add_member(self, user: dict[str, Any], roles: Iterable[int]) -> None:
        user_id = int(user["id"])
        unknown = [role_id for role_id in roles if role_id not in self.roles]
        if unknown:
            raise ValueError(f"unknown role ids {unknown}; add them with add_role first")
        self.users[user_id] = user
        self.member_roles[user_id] = list(roles)
        self.joined_at[user_id] = dt.datetime.now(dt.timezone.utc).isoformat()

    def permissions(self, user_id: int) -> int:
        """Guild-level permissions (channels carry no overwrites in the fake)."""
        if user_id == self.owner_id:
            return ALL_PERMISSIONS
        value = int(self.roles[self.id]["permissions"])
        for role_id in self.member_roles.get(user_id, []):
            value |= int(self.roles[role_id]["permissions"])
        return ALL_PERMISSIONS if value & ADMINISTRATOR else value

    def may_use(self, user_id: int, default_member_permissions: str | None) -> bool:
        """Whether Discord offers a command with these ``default_member_permissions`` to the member."""
        granted = self.permissions(user_id)
        if default_member_permissions is None or granted == ALL_PERMISSIONS:
            return True
        needed = int(default_member_permissions)
        return needed != 0 and granted & needed == needed  # "0" means administrators only

    def member(self, user_id: int, *, with_user: bool = True, with_permissions: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "roles": [str(role_id) for role_id in self.member_roles[user_id]],
            "joined_at": self.joined_at[user_id],
            "nick": None,
            "avatar": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "communication_disabled_until": None,
        }
        if with_user:
            data["user"] = self.users[user_id]
        if with_permissions:
            data["permissions"] = str(self.permissions(user_id))
        return data

    def channel(self, channel_id: int) -> dict[str, Any]:
        try:
            return self.channels[channel_id]
        except KeyError:
            raise ValueError(f"unknown channel {channel_id}; add it with add_channel first") from None

    def create_payload(self, *, bot_user_id: int, premium_tier: int, with_members: bool) -> dict[str, Any]:
        """GUILD_CREATE. Without the GUILD_MEMBERS intent Discord sends only the bot's own member."""
        member_ids = list(self.users) if with_members else [bot_user_id]
        return {
            "id": str(self.id),
            "name": self.name,
            "owner_id": str(self.owner_id),
            "icon": None,
            "unavailable": False,
            "large": False,
            # member_count == len(members) marks the guild as chunked, so discord.py sends no op 8 at startup.
            "member_count": len(self.users),
            "premium_tier": premium_tier,
            "preferred_locale": "en-US",
            "features": [],
            "roles": list(self.roles.values()),
            "channels": list(self.channels.values()),
            "members": [self.member(user_id) for user_id in member_ids],
            "threads": [],
            "presences": [],
            "voice_states": [],
            "emojis": [],
            "stickers": [],
            "joined_at": self.joined_at[bot_user_id],
            "system_channel_id": None,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
        }
