"""Buttons that keep working after a restart: their state lives in the custom_id (templates below) and
the database, never in memory. A custom_id is client-supplied, so every click is checked against the
engine's idea of who owns what, not against the id alone."""
from __future__ import annotations

import re

import discord

from bot.access import actor_of
from bot.render import TAGS_PER_PAGE, intake_embed, tag_page_embed
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


class ConfirmDeleteButton(ReportsErrors, discord.ui.DynamicItem[discord.ui.Button],
                          template=r"lb:del:(?P<project_id>\d+):(?P<owner>\d+)"):
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


class TagsPageButton(ReportsErrors, discord.ui.DynamicItem[discord.ui.Button],
                     template=r"lb:tags:(?P<project_id>\d+):(?P<kind>train|reg):(?P<page>\d+):(?P<label>prev|next)"):
    def __init__(self, project_id: int, kind: str, page: int, label: str, *, disabled: bool = False) -> None:
        self.project_id, self.kind, self.page = project_id, kind, page
        super().__init__(discord.ui.Button(
            label="◀ Previous" if label == "prev" else "Next ▶", style=discord.ButtonStyle.secondary,
            disabled=disabled, custom_id=f"lb:tags:{project_id}:{kind}:{page}:{label}"))

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str], /) -> TagsPageButton:
        return cls(int(match["project_id"]), match["kind"], int(match["page"]), match["label"])

    async def handle(self, interaction: discord.Interaction) -> None:
        engine = interaction.client.engine  # type: ignore[attr-defined]
        actor = actor_of(interaction)
        project = await engine.get_project_by_id(actor, self.project_id)  # refuses other members' projects
        stats = await engine.tag_stats(actor, project.name, self.kind)
        await interaction.response.edit_message(embed=tag_page_embed(project.name, self.kind, stats, self.page),
                                                view=tags_view(project.id, self.kind, self.page, len(stats)))


def tags_view(project_id: int, kind: str, page: int, tag_count: int) -> discord.ui.View | None:
    pages = max(1, -(-tag_count // TAGS_PER_PAGE))
    if pages == 1:
        return None
    page = min(max(page, 0), pages - 1)
    view = discord.ui.View(timeout=None)
    view.add_item(TagsPageButton(project_id, kind, max(page - 1, 0), "prev", disabled=page == 0))
    view.add_item(TagsPageButton(project_id, kind, min(page + 1, pages - 1), "next", disabled=page == pages - 1))
    return view


class AddToProjectSelect(ReportsErrors, discord.ui.DynamicItem[discord.ui.Select],
                         template=r"lb:addmsg:(?P<token>\d+-[0-9a-f]+)"):
    """The project picker shown by "Apps → Add to LoRA project"; the pictures wait in staging."""

    def __init__(self, token: str, projects: list[str] | None = None) -> None:
        self.token = token
        options = [discord.SelectOption(label=name) for name in (projects or [])[:25]]
        super().__init__(discord.ui.Select(placeholder="Add the pictures to…", options=options or
                                           [discord.SelectOption(label="-")], custom_id=f"lb:addmsg:{token}"))

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Select,
                             match: re.Match[str], /) -> AddToProjectSelect:
        return cls(match["token"])

    async def handle(self, interaction: discord.Interaction) -> None:
        if not self.token.startswith(f"{interaction.user.id}-"):
            await interaction.response.send_message("🚫 These pictures were picked by someone else.", ephemeral=True)
            return
        await interaction.response.defer()
        project = self.item.values[0]
        report = await interaction.client.engine.add_staged_images(  # type: ignore[attr-defined]
            actor_of(interaction), self.token, project)
        await interaction.edit_original_response(content=None, embed=intake_embed(project, report, []), view=None)


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


DYNAMIC_ITEMS = (ConfirmDeleteButton, CancelJobButton, TagsPageButton, AddToProjectSelect)
