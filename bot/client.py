"""LoraBot: the Discord front-end. It holds no business logic: cogs turn interactions into engine
calls, StatusMessages turns engine events into message edits."""
from __future__ import annotations

import hashlib
import json
import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.access import AccessPolicy
from bot.browse_views import BrowseButton
from bot.buttons import DYNAMIC_ITEMS
from bot.cogs.curate import CurateCog
from bot.cogs.pictures import PicturesCog
from bot.cogs.projects import ProjectsCog
from bot.cogs.queue import QueueCog
from bot.cogs.reg import RegCog
from bot.cogs.tags import TagsCog
from bot.cogs.training import StartTrainingButton, TrainingCog
from bot.curate_views import CURATE_ITEMS
from bot.replies import report_error
from bot.status import StatusMessages
from engine.config import Config
from engine.facade import Engine

log = logging.getLogger(__name__)

SYNC_HASH_KEY = "discord.commands_hash"


class LoraTree(app_commands.CommandTree):
    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.type is discord.InteractionType.autocomplete:
            return True
        self.client.access.check(interaction)  # type: ignore[attr-defined]
        return True

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        await report_error(interaction, error)


class LoraBot(commands.Bot):
    def __init__(self, engine: Engine, config: Config) -> None:
        # Slash commands need no privileged intents; guilds gives us channels, roles and permissions.
        super().__init__(command_prefix=commands.when_mentioned, intents=discord.Intents(guilds=True),
                         tree_cls=LoraTree, help_command=None)
        self.engine = engine
        self.config = config
        self.access = AccessPolicy(config.discord)
        self.lora = app_commands.Group(name="lora", description="Train a LoRA of your character",
                                       guild_only=True)
        self.status_messages = StatusMessages(self, engine, config.discord.status_edit_interval_s)

    async def setup_hook(self) -> None:
        await self.add_cog(ProjectsCog(self))
        await self.add_cog(PicturesCog(self))
        await self.add_cog(TagsCog(self))
        await self.add_cog(CurateCog(self))
        await self.add_cog(RegCog(self))
        await self.add_cog(TrainingCog(self))
        await self.add_cog(QueueCog(self))
        self.tree.add_command(self.lora)
        self.add_dynamic_items(*DYNAMIC_ITEMS, *CURATE_ITEMS, BrowseButton, StartTrainingButton)
        self.status_messages.start()
        await self.sync_commands()
        await self.status_messages.refresh_active()

    async def sync_commands(self) -> None:
        """Guild sync when a guild is configured (instant, for development and single-server bots);
        otherwise a global sync, and only when the commands changed (global sync is rate-limited)."""
        guild_id = self.config.discord.guild_id
        if guild_id:
            guild = discord.Object(guild_id)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)
            return
        payload = [command.to_dict(self.tree) for command in self.tree.get_commands()]
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        if await self.engine.get_setting(SYNC_HASH_KEY) != digest:
            await self.tree.sync()
            await self.engine.put_setting(SYNC_HASH_KEY, digest)

    async def close(self) -> None:
        await self.status_messages.close()
        await super().close()
