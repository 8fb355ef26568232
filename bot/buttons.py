"""Buttons that keep working after a restart: their state lives in the custom_id (templates below) and
the database, never in memory. A custom_id is client-supplied, so every click is checked against the
engine's idea of who owns what, not against the id alone."""
from __future__ import annotations

import re
import discord

from bot.access import actor_of
from bot.replies import report_error


class ReportsErrors:
    """Mixed into each button: errors raised by a click become a clear ephemeral reply."""

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await self.handle(interaction)
        except Exception as error:  # noqa: BLE001 - every failure is reported to the clicker
            await report_error(interaction, error)

    async def handle(self, interaction: discord.Interaction) -> None:
        raise NotImplementedError


class ConfirmDeleteButton(ReportsErrors, discord.ui.DynamicItem[discord.ui.Button], template=r"lb:del:(?P<project_id>\d+):(?P<owner>\d+)"):
    def __init__(self, project_id: int, owner: int) -> None:
        self.project_id = project_id
        self.owner = owner
        super().__init__(discord.ui.Button(label="Delete forever", style=discord.ButtonStyle.danger,
                                           emoji="🗑️", custom_id=f"lb:del:{project_id}:{owner}"))

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str], /) -> ConfirmDeleteButton:
        return cls(int(match["project_id"]), int(match["owner"]))

    async def handle(self, interaction: discord.Interaction) -> None:
        if interaction.user.id != self.owner:
            await interaction.response.send_message("🚫 This button belongs to someone else's project.", ephemeral=True)
            return
        await interaction.response.defer()
        engine = interaction.client.engine  # type: ignore[attr-defined]
        actor = actor_of(interaction)
        project = await engine.get_project_by_id(actor, self.project_id)
        await engine.delete_project(actor, project.name)
        await interaction.edit_original_response(
            content=f"🗑️ Project **{project.name}** and all its files were deleted.", view=None, embed=None)


class CancelJobButton(ReportsErrors, discord.ui.DynamicItem[discord.ui.Button], template=r"lb:cancel:(?P<job_id>\d+)"):
    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        super().__init__(discord.ui.Button(label="Cancel", style=discord.ButtonStyle.secondary, emoji="🛑",
                                           custom_id=f"lb:cancel:{job_id}"))

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str], /) -> CancelJobButton:
        return cls(int(match["job_id"]))

    async def handle(self, interaction: discord.Interaction) -> None:
        engine = interaction.client.engine  # type: ignore[attr-defined]
        await interaction.response.defer(ephemeral=True, thinking=True)
        job = await engine.cancel(actor_of(interaction), self.job_id)
        await interaction.followup.send(f"🛑 Job #{job.id} ({job.title}) was cancelled.", ephemeral=True)


def job_view(job_id: int, active: bool) -> discord.ui.View | None:
    """The buttons under a job's status message: Cancel while it can still be cancelled."""
    if not active:
        return None
    view = discord.ui.View(timeout=None)
    view.add_item(CancelJobButton(job_id))
    return view


def delete_view(project_id: int, owner: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(ConfirmDeleteButton(project_id, owner))
    return view


DYNAMIC_ITEMS = (ConfirmDeleteButton, CancelJobButton)
