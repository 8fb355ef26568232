"""What every area's commands share: the cog base that files a cog's commands under /lora and registers its
buttons, the typed way to reach the bot and the engine from an interaction, the project autocomplete, and
the option choices several commands offer."""
from __future__ import annotations

from typing import TYPE_CHECKING, cast

import discord
from discord import app_commands
from discord.ext import commands

from bot.access import actor_of

if TYPE_CHECKING:
    from bot.client import LoraBot
    from engine.facade import Engine

# The `model` option of the commands whose work depends on the base model (training, reg pictures).
MODEL_CHOICES = [app_commands.Choice(name="Stable Diffusion 1.5", value="sd15"),
                 app_commands.Choice(name="SDXL", value="sdxl")]
SETS = {"training": "train", "regularization": "reg"}


def lora_bot(interaction: discord.Interaction) -> LoraBot:
    """The bot behind an interaction, typed (discord.py types `interaction.client` as a plain Client)."""
    return cast("LoraBot", interaction.client)


def engine_of(interaction: discord.Interaction) -> Engine:
    return lora_bot(interaction).engine


async def own_project_names(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    """Autocomplete: only the member's own projects, at most 25 as Discord allows."""
    engine = engine_of(interaction)
    names = await engine.project_names(actor_of(interaction), current, limit=25)
    return [app_commands.Choice(name=name, value=name) for name in names]


class LoraCog(commands.Cog):
    """A cog whose app commands live under the bot's shared `/lora` group instead of the top level, and
    whose persistent buttons (`DynamicItem` templates, listed in `dynamic_items`) it registers itself."""

    dynamic_items: tuple[type[discord.ui.DynamicItem], ...] = ()

    def __init__(self, bot: LoraBot) -> None:
        self.bot = bot
        self.engine = bot.engine

    async def cog_load(self) -> None:
        # discord.py adds a plain cog's app commands to the tree right after cog_load; moving them
        # into /lora here means they are added there instead (they keep their binding to this cog).
        for command in self.__cog_app_commands__:
            self.bot.lora.add_command(command)
        self.__cog_app_commands__ = []
        self.bot.add_dynamic_items(*self.dynamic_items)
