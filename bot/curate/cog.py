"""/lora curate, browse, trigger, replace, export."""
from __future__ import annotations

from typing import Literal

import discord
from discord import app_commands

from bot.access import actor_of
from bot.commands import SETS, LoraCog, own_project_names
from bot.curate.browse import BrowseButton, browse_message
from bot.curate.views import CurateControl, TagToggle, curate_embed, curate_view
from bot.render import clip
from engine.curation.ops import split_tags


class CurateCog(LoraCog):
    dynamic_items = (TagToggle, CurateControl, BrowseButton)

    @app_commands.command(name="curate", description="Prune the tags that describe your character's fixed looks")
    @app_commands.describe(project="One of your projects", picture_set="Training (default) or regularization")
    @app_commands.rename(picture_set="set")
    @app_commands.autocomplete(project=own_project_names)
    async def curate(self, interaction: discord.Interaction, project: str,
                     picture_set: Literal["training", "regularization"] = "training") -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        view = await self.engine.curation.view(actor_of(interaction), project, SETS[picture_set])
        if not view.stats:
            await interaction.followup.send(f"❌ {view.project} has no captions yet: run `/lora tag` first.",
                                            ephemeral=True)
            return
        await interaction.followup.send(embed=curate_embed(view, 0), view=curate_view(view, 0), ephemeral=True)

    @app_commands.command(name="browse", description="Look through a project's pictures and their tags")
    @app_commands.describe(project="One of your projects", number="Start at this picture (1 = first)")
    @app_commands.autocomplete(project=own_project_names)
    async def browse(self, interaction: discord.Interaction, project: str,
                     number: app_commands.Range[int, 1] = 1) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        found = await self.engine.get_project(actor_of(interaction), project)
        message = await browse_message(interaction, found.id, number - 1)
        files = message.pop("attachments")
        message = {key: value for key, value in message.items() if value is not None}
        await interaction.followup.send(**message, files=files, ephemeral=True)

    @app_commands.command(name="trigger", description="Change a project's trigger word (first in every caption)")
    @app_commands.describe(project="One of your projects", trigger="The new trigger word, e.g. XingBar")
    @app_commands.autocomplete(project=own_project_names)
    async def trigger(self, interaction: discord.Interaction, project: str, trigger: str) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        result, check = await self.engine.curation.set_trigger(actor_of(interaction), project, trigger)
        lines = [f"✅ {result.description}"]
        if not check.safe:
            lines.append("This trigger may already mean something to the model:")
        lines += check.lines()
        if check.suggestion:
            lines.append("Run `/lora trigger` again to switch.")
        await interaction.followup.send(clip("\n".join(lines), 2000), ephemeral=True)

    @app_commands.command(name="replace", description="Search and replace tags in every caption")
    @app_commands.describe(project="One of your projects", search="Tags to look for, separated by commas",
                           replace="Tags to put instead (leave empty to delete)",
                           mode="or: captions with any of the tags; and: only captions with all of them",
                           make_trigger="Make the (single) new tag the project's trigger word")
    @app_commands.autocomplete(project=own_project_names)
    async def replace(self, interaction: discord.Interaction, project: str, search: str, replace: str = "",
                      mode: Literal["or", "and"] = "or", make_trigger: bool = False) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        result = await self.engine.curation.replace_tags(actor_of(interaction), project, split_tags(search),
                                                         split_tags(replace), mode=mode, make_trigger=make_trigger)
        await interaction.followup.send(clip(f"✅ {result.description}", 2000), ephemeral=True)

    @app_commands.command(name="export", description="Download the dataset as a zip for kohya sd-scripts")
    @app_commands.describe(project="One of your projects", repeats="Repeats per epoch in the folder name (10)")
    @app_commands.autocomplete(project=own_project_names)
    async def export(self, interaction: discord.Interaction, project: str,
                     repeats: app_commands.Range[int, 1, 100] = 10) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        actor = actor_of(interaction)
        summary = await self.engine.curation.export(actor, project, repeats)
        text = (f"📦 {summary.images} pictures, {summary.reg_images} reg pictures"
                + (f", {summary.uncaptioned} without captions" if summary.uncaptioned else "") + ".")
        if summary.size_bytes <= interaction.filesize_limit:
            await interaction.followup.send(text, file=discord.File(summary.path), ephemeral=True)
        else:
            link = await self.engine.export_link(actor, project, summary.path)
            await interaction.followup.send(f"{text}\nIt is too big for Discord; download it here (the link "
                                            f"expires): {link}", ephemeral=True)
