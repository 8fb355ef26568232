"""/lora reg."""
from __future__ import annotations

import discord
from discord import app_commands

from bot.access import actor_of
from bot.commands import MODEL_CHOICES, LoraCog, own_project_names
from bot.job_messages import show_job
from bot.replies import defer_publicly


class RegCog(LoraCog):
    @app_commands.command(name="reg",
                          description="Make regularization pictures of your project's class with the base model")
    @app_commands.describe(project="One of your projects",
                           count="How many pictures (default 100; asking again only adds the missing ones)",
                           prompt="Instead of the project's class, e.g. 'man, outdoors' (quality words are added)",
                           model="The base model family you will train on (default: the server's)")
    @app_commands.choices(model=MODEL_CHOICES)
    @app_commands.autocomplete(project=own_project_names)
    async def reg(self, interaction: discord.Interaction, project: str,
                  count: app_commands.Range[int, 1, 10_000] | None = None,
                  prompt: app_commands.Range[str, 1, 300] | None = None, model: str | None = None) -> None:
        await defer_publicly(interaction)
        job = await self.engine.reg.start(actor_of(interaction), project, count=count, prompt=prompt, family=model)
        await show_job(interaction, job)
