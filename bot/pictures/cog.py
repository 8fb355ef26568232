"""/lora upload and "Apps → Add to LoRA project"."""
from __future__ import annotations

from typing import Literal

import discord
from discord import app_commands

from bot.access import actor_of
from bot.commands import SETS, LoraCog, engine_of, own_project_names
from bot.pictures.uploads import download, looks_uploadable, with_progress
from bot.pictures.views import AddToProjectSelect, intake_embed
from bot.replies import report_error


async def add_and_report(interaction: discord.Interaction, project: str, kind: str,
                         attachments: list[discord.Attachment]) -> None:
    """Downloads, hands to the engine with live progress, and answers with the report (deferred before)."""
    engine = engine_of(interaction)
    max_bytes = int(engine.config.intake.max_file_mb * 2**20)
    files, refused = await download(attachments, max_bytes)

    async def show(text: str) -> None:
        await interaction.edit_original_response(content=text)

    report = await with_progress(
        lambda progress: engine.add_images(actor_of(interaction), project, files, kind, progress), show)
    await interaction.edit_original_response(content=None, embed=intake_embed(project, report, refused))


class UploadModal(discord.ui.Modal):
    """Discord's own file picker, for members on phones where slash-command attachments are fiddly."""

    def __init__(self, project: str, kind: str) -> None:
        super().__init__(title=f"Add pictures to {project}"[:45], timeout=900)
        self.project, self.kind = project, kind
        self.files = discord.ui.FileUpload(custom_id="files", min_values=1, max_values=10)
        self.add_item(discord.ui.Label(text="Pictures or zips (up to 10)", component=self.files))

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        await add_and_report(interaction, self.project, self.kind, list(self.files.values))

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:
        await report_error(interaction, error)


class PicturesCog(LoraCog):
    dynamic_items = (AddToProjectSelect,)

    async def cog_load(self) -> None:
        await super().cog_load()
        self.bot.tree.add_command(app_commands.ContextMenu(name="Add to LoRA project", callback=self.add_from_message))

    @app_commands.command(name="upload", description="Add pictures (or zips of them) to a project")
    @app_commands.describe(project="One of your projects", picture_set="Training pictures (default) or "
                           "regularization pictures", file1="A picture or a .zip; leave all files empty to "
                           "pick them in a form instead")
    @app_commands.rename(picture_set="set")
    @app_commands.autocomplete(project=own_project_names)
    async def upload(self, interaction: discord.Interaction, project: str,
                     file1: discord.Attachment | None = None, file2: discord.Attachment | None = None,
                     file3: discord.Attachment | None = None, file4: discord.Attachment | None = None,
                     file5: discord.Attachment | None = None, file6: discord.Attachment | None = None,
                     file7: discord.Attachment | None = None, file8: discord.Attachment | None = None,
                     file9: discord.Attachment | None = None, file10: discord.Attachment | None = None,
                     picture_set: Literal["training", "regularization"] = "training") -> None:
        attachments = [a for a in (file1, file2, file3, file4, file5, file6, file7, file8, file9, file10) if a]
        kind = SETS[picture_set]
        if not attachments:
            found = await self.engine.get_project(actor_of(interaction), project)  # fail before the form opens
            await interaction.response.send_modal(UploadModal(found.name, kind))
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        await add_and_report(interaction, project, kind, attachments)

    async def add_from_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        attachments = [a for a in message.attachments if looks_uploadable(a)]
        if not attachments:
            await interaction.followup.send("❌ That message has no pictures or zips attached.", ephemeral=True)
            return
        actor = actor_of(interaction)
        projects = await self.engine.project_names(actor, limit=25)
        if not projects:
            await interaction.followup.send("❌ You have no project yet: start one with `/lora new`.", ephemeral=True)
            return
        if len(projects) == 1:
            await add_and_report(interaction, projects[0], "train", attachments)
            return
        files, refused = await download(attachments, int(self.engine.config.intake.max_file_mb * 2**20))
        token = self.engine.stage_images(actor, files)
        view = discord.ui.View(timeout=None)
        view.add_item(AddToProjectSelect(token, projects))
        note = "" if not refused else "\n" + "\n".join(f"• `{r.name}` — {r.reason}" for r in refused)
        await interaction.followup.send(f"📥 {len(files)} files ready. Which project are they for?{note}"[:2000],
                                        view=view, ephemeral=True)
