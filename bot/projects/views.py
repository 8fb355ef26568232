"""How projects look (info card, list) and the delete confirmation button."""
from __future__ import annotations

import datetime as dt
import re

import discord

from bot.access import actor_of
from bot.commands import engine_of
from bot.render import clip
from bot.replies import ReportsErrors
from engine.records import Project


def project_embed(project: Project) -> discord.Embed:
    embed = discord.Embed(title=clip(f"📁 {project.name}", 256), colour=discord.Colour.teal())
    embed.add_field(name="Trigger word", value=f"`{project.trigger}`")
    embed.add_field(name="Class", value=clip(project.class_name, 1024))
    embed.add_field(name="Training images", value=str(project.train_images))
    embed.add_field(name="Captioned", value=f"{project.captioned}/{project.train_images + project.reg_images}")
    embed.add_field(name="Reg images", value=str(project.reg_images))
    embed.add_field(name="Active jobs", value=str(project.active_jobs))
    created = dt.datetime.fromtimestamp(project.created_at, dt.UTC)
    embed.set_footer(text="created")
    embed.timestamp = created
    if project.train_images == 0:
        embed.description = "No pictures yet: add 5–200 pictures of your character to start."
    return embed


def project_list_embed(projects: list[Project]) -> discord.Embed:
    embed = discord.Embed(title="Your LoRA projects", colour=discord.Colour.teal())
    if not projects:
        embed.description = "You have no projects yet. Start one with `/lora new`."
        return embed
    lines = [f"**{p.name}** — trigger `{p.trigger}`, class {p.class_name}, {p.train_images} images"
             + (f", {p.active_jobs} active jobs" if p.active_jobs else "") for p in projects]
    embed.description = clip("\n".join(lines), 4096)
    return embed


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
        engine = engine_of(interaction)
        actor = actor_of(interaction)
        project = await engine.get_project_by_id(actor, self.project_id)
        await engine.delete_project(actor, project.name)
        await interaction.edit_original_response(
            content=f"🗑️ Project **{project.name}** and all its files were deleted.", view=None, embed=None)


def delete_view(project_id: int, owner: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(ConfirmDeleteButton(project_id, owner))
    return view
