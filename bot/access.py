"""Who may use the bot where: the server owner's channel and role limits, admins, and a per-member
command rate so one member cannot flood the queue or the database."""
from __future__ import annotations

import time
from collections import defaultdict, deque

import discord

from bot.replies import Refused
from engine.config import DiscordConfig
from engine.records import Actor


def is_admin(interaction: discord.Interaction) -> bool:
    permissions = getattr(interaction.user, "guild_permissions", None)
    return bool(permissions and (permissions.manage_guild or permissions.administrator))


def actor_of(interaction: discord.Interaction) -> Actor:
    return Actor(interaction.user.id, interaction.user.name, is_admin(interaction))


class AccessPolicy:
    def __init__(self, config: DiscordConfig) -> None:
        self._config = config
        self._recent: defaultdict[int, deque[float]] = defaultdict(deque)

    def check(self, interaction: discord.Interaction) -> None:
        """Raises Refused with the reason when this interaction may not run."""
        if interaction.guild is None:
            raise Refused("lorabake works inside a server, not in direct messages.")
        admin = is_admin(interaction)
        channels = self._config.allowed_channel_ids
        if channels and interaction.channel_id not in channels and not admin:
            where = ", ".join(f"<#{channel}>" for channel in channels)
            raise Refused(f"lorabake is only available in {where} on this server.")
        roles = self._config.allowed_role_ids
        if roles and not admin:
            member_roles = {role.id for role in getattr(interaction.user, "roles", [])}
            if not member_roles.intersection(roles):
                names = ", ".join(f"<@&{role}>" for role in roles)
                raise Refused(f"lorabake is for members with one of these roles: {names}. Ask a moderator.")
        self._rate(interaction.user.id)

    def _rate(self, user_id: int) -> None:
        now = time.monotonic()
        window = self._recent[user_id]
        while window and now - window[0] > 60:
            window.popleft()
        if len(window) >= self._config.commands_per_minute:
            wait = 60 - (now - window[0])
            raise Refused(f"that is a lot of commands in one minute; wait {wait:.0f} s and try again.")
        window.append(now)
