"""/lora samples."""
from __future__ import annotations

import discord
from discord import app_commands

from bot.access import actor_of
from bot.commands import LoraCog, own_project_names
from bot.job_messages import show_job
from bot.replies import defer_publicly
from bot.samples.views import post_results
from engine.errors import NotFound


class SamplesCog(LoraCog):
    @app_commands.command(name="samples",
                          description="Sample grids at several LoRA weights, scores and a recommendation")
    @app_commands.describe(project="One of your projects", epoch="Only this epoch's grid and scores",
                           rerun="Render new samples of every epoch instead of showing the last ones")
    @app_commands.autocomplete(project=own_project_names)
    async def samples(self, interaction: discord.Interaction, project: str,
                      epoch: app_commands.Range[int, 1, 100] | None = None, rerun: bool = False) -> None:
        await defer_publicly(interaction)
        actor = actor_of(interaction)
        if not rerun:
            try:
                results = await self.engine.training.latest_samples(actor, project, epoch)
            except NotFound:
                results = None  # none yet: render them
            if results is not None:
                await post_results(
                    results, lambda embed, files: interaction.edit_original_response(embed=embed, attachments=files),
                    interaction.followup.send)
                return
        job = await self.engine.training.samples(actor, project)
        await show_job(interaction, job)
