"""One cog per feature area; each cog's slash commands become subcommands of /lora."""
from __future__ import annotations

from typing import TYPE_CHECKING

from discord.ext import commands

if TYPE_CHECKING:
    from bot.client import LoraBot


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
