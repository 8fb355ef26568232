"""/lora queue, cancel, check."""
from __future__ import annotations

import discord
from discord import app_commands

from bot.access import actor_of, is_admin
from bot.commands import LoraCog
from bot.job_messages import CancelJobButton, show_job
from bot.queue.views import queue_embed
from bot.replies import defer_publicly


class QueueCog(LoraCog):
    dynamic_items = (CancelJobButton,)

    @app_commands.command(name="queue", description="Your jobs and their places in the queue")
    @app_commands.describe(everyone="Server managers: show every member's jobs")
    async def queue(self, interaction: discord.Interaction, everyone: bool = False) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        everyone = everyone and is_admin(interaction)
        jobs = await self.engine.jobs(None if everyone else actor_of(interaction))
        await interaction.followup.send(embed=queue_embed(jobs, everyone=everyone), ephemeral=True)

    @app_commands.command(name="cancel", description="Cancel one of your jobs (server managers: any job)")
    @app_commands.describe(job="The job number, as /lora queue shows it")
    async def cancel(self, interaction: discord.Interaction, job: app_commands.Range[int, 1]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        cancelled = await self.engine.cancel(actor_of(interaction), job)
        await interaction.followup.send(f"🛑 Job #{cancelled.id} ({cancelled.title}) was cancelled.", ephemeral=True)

    @cancel.autocomplete("job")
    async def cancel_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[int]]:
        actor = actor_of(interaction)
        jobs = await self.engine.jobs(None if actor.is_admin else actor)
        return [app_commands.Choice(name=f"#{j.id} {j.title}"[:100], value=j.id)
                for j in jobs if str(j.id).startswith(current.strip().lstrip("#"))][:25]

    @app_commands.command(name="check", description="Check the bot's GPU box: device, memory, tagger speed-up")
    async def check(self, interaction: discord.Interaction) -> None:
        await defer_publicly(interaction)
        job = await self.engine.enqueue(actor_of(interaction), "check")
        await show_job(interaction, job)
