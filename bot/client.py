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
from bot.commands import lora_bot
from bot.curate.cog import CurateCog
from bot.pictures.cog import PicturesCog
from bot.projects.cog import ProjectsCog
from bot.queue.cog import QueueCog
from bot.reg.cog import RegCog
from bot.replies import report_error
from bot.samples.cog import SamplesCog
from bot.status import StatusMessages
from bot.tags.cog import TagsCog
from bot.training.cog import TrainingCog
from engine.config import Config
from engine.facade import Engine

log = logging.getLogger(__name__)

SYNC_HASH_KEY = "discord.commands_hash"


class LoraTree(app_commands.CommandTree):
    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.type is discord.InteractionType.autocomplete:
            return True
        lora_bot(interaction).access.check(interaction)
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
        # One cog per area; each files its commands under /lora and registers its own persistent buttons.
        for cog in (ProjectsCog, PicturesCog, TagsCog, CurateCog, RegCog, TrainingCog, SamplesCog, QueueCog):
            await self.add_cog(cog(self))
        self.tree.add_command(self.lora)
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
