"""One cog per feature area; each cog's slash commands become subcommands of /lora."""
from __future__ import annotations

from typing import TYPE_CHECKING

from discord import app_commands
from discord.ext import commands

if TYPE_CHECKING:
    from bot.client import LoraBot

# The `model` option of the commands whose work depends on the base model (training, reg pictures).
MODEL_CHOICES = [app_commands.Choice(name="Stable Diffusion 1.5", value="sd15"),
                 app_commands.Choice(name="SDXL", value="sdxl")]


class LoraCog(commands.Cog):
    """A cog whose app commands live under the bot's shared `/lora` group instead of the top level."""

    def __init__(self, bot: LoraBot) -> None:
        self.bot = bot
        self.engine = bot.engine

    async def cog_load(self) -> None:
        # discord.py adds a plain cog's app commands to the tree right after cog_load; moving them
        # into /lora here means they are added there instead (they keep their binding to this cog).
        for command in self.__cog_app_commands__:
            self.bot.lora.add_command(command)
        self.__cog_app_commands__ = []
