"""/lora tag and /lora tags."""
from __future__ import annotations

from typing import Literal

import discord
from discord import app_commands

from bot.access import actor_of
from bot.commands import SETS, LoraCog, own_project_names
from bot.job_messages import show_job
from bot.replies import defer_publicly
from bot.tags.views import TagsPageButton, tag_page_embed, tags_view


class TagsCog(LoraCog):
    dynamic_items = (TagsPageButton,)

    @app_commands.command(name="tag", description="Write a caption (tags) for every picture of a project")
    @app_commands.describe(project="One of your projects",
                           general_threshold="Keep tags the tagger is at least this sure of (default 0.35)",
                           character_threshold="The same for character names (default 0.85; above 1 = none)")
    @app_commands.autocomplete(project=own_project_names)
    async def tag(self, interaction: discord.Interaction, project: str,
                  general_threshold: app_commands.Range[float, 0.0, 2.0] | None = None,
                  character_threshold: app_commands.Range[float, 0.0, 2.0] | None = None) -> None:
        await defer_publicly(interaction)
        job = await self.engine.tag(actor_of(interaction), project, general_threshold=general_threshold,
                                    character_threshold=character_threshold)
        await show_job(interaction, job)

    @app_commands.command(name="tags", description="The tags of a project's pictures, most common first")
    @app_commands.describe(project="One of your projects", picture_set="Training (default) or regularization")
    @app_commands.rename(picture_set="set")
    @app_commands.autocomplete(project=own_project_names)
    async def tags(self, interaction: discord.Interaction, project: str,
                   picture_set: Literal["training", "regularization"] = "training") -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        actor = actor_of(interaction)
        found = await self.engine.get_project(actor, project)
        kind = SETS[picture_set]
        stats = await self.engine.tag_stats(actor, found.name, kind)
        view = tags_view(found.id, kind, 0, len(stats))
        await interaction.followup.send(embed=tag_page_embed(found.name, kind, stats, 0), ephemeral=True,
                                        **({"view": view} if view else {}))
