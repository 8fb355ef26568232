"""/lora new, list, info, delete."""
from __future__ import annotations

import discord
from discord import app_commands

from bot.access import actor_of
from bot.commands import LoraCog, own_project_names
from bot.projects.views import ConfirmDeleteButton, delete_view, project_embed, project_list_embed


class ProjectsCog(LoraCog):
    dynamic_items = (ConfirmDeleteButton,)

    @app_commands.command(name="new", description="Start a LoRA project for a character")
    @app_commands.describe(
        name="A name for the project, e.g. XingBar30",
        trigger="A made-up word that will summon your character, e.g. XingBar (no spaces or commas)",
        class_name="What the character is: man, woman, 1girl, 1boy, dog…",
    )
    @app_commands.rename(class_name="class")
    async def new(self, interaction: discord.Interaction, name: str, trigger: str, class_name: str) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        project = await self.engine.create_project(actor_of(interaction), name, trigger, class_name)
        await interaction.followup.send(
            f"✅ Project **{project.name}** created with trigger `{project.trigger}` (class {project.class_name}).",
            embed=project_embed(project), ephemeral=True)

    @app_commands.command(name="list", description="Your LoRA projects")
    async def list_projects(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        projects = await self.engine.list_projects(actor_of(interaction))
        await interaction.followup.send(embed=project_list_embed(projects), ephemeral=True)

    @app_commands.command(name="info", description="Details of one of your projects")
    @app_commands.describe(project="One of your projects")
    @app_commands.autocomplete(project=own_project_names)
    async def info(self, interaction: discord.Interaction, project: str) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        found = await self.engine.get_project(actor_of(interaction), project)
        await interaction.followup.send(embed=project_embed(found), ephemeral=True)

    @app_commands.command(name="delete", description="Delete one of your projects and all its files")
    @app_commands.describe(project="One of your projects")
    @app_commands.autocomplete(project=own_project_names)
    async def delete(self, interaction: discord.Interaction, project: str) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        found = await self.engine.get_project(actor_of(interaction), project)
        warning = (f"⚠️ Delete **{found.name}**? Its {found.train_images} images, captions, trained files and "
                   "samples will be gone for good"
                   + (f", and its {found.active_jobs} jobs cancelled" if found.active_jobs else "")
                   + ". Dismiss this message to keep it.")
        await interaction.followup.send(warning, view=delete_view(found.id, interaction.user.id), ephemeral=True)
