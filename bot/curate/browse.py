"""The per-picture browser: one picture with its caption, Previous/Next, "Edit tags" (a form) and
"Remove picture". The picture's place and id travel in the custom_id; the engine checks ownership."""
from __future__ import annotations

import io
import re

import discord

from bot.access import actor_of
from bot.commands import engine_of
from bot.render import clip
from bot.replies import ReportsErrors, report_error
from engine.intake.report import shown_name


async def browse_message(interaction: discord.Interaction, project_id: int, index: int,
                         note: str = "") -> dict:
    """The embed, preview file and buttons for picture number `index` (wrapping) of a project."""
    engine = engine_of(interaction)
    actor = actor_of(interaction)
    project = await engine.get_project_by_id(actor, project_id)
    images = await engine.images(actor, project.name, "train")
    if not images:
        return {"content": f"**{project.name}** has no pictures: add some with `/lora upload`.", "embed": None,
                "attachments": [], "view": None}
    index %= len(images)
    image = images[index]
    captions = await engine.captions(actor, project.name, "train")
    embed = discord.Embed(title=clip(f"🖼️ {project.name} — picture {index + 1} of {len(images)}", 256),
                          colour=discord.Colour.teal())
    where = f"`{shown_name(image.source)}` · {image.width}×{image.height}"
    embed.description = clip((f"{note}\n" if note else "") + where, 4096)
    embed.add_field(name="Tags", value=clip(captions.get(image.id) or "(no caption yet: run /lora tag)", 1024),
                    inline=False)
    embed.set_image(url="attachment://preview.jpg")
    preview = discord.File(io.BytesIO(await engine.preview(actor, project_id, image.id)), filename="preview.jpg")
    view = discord.ui.View(timeout=None)
    for action in ("prev", "next", "edit", "remove"):
        view.add_item(BrowseButton(project_id, index, image.id, action))
    return {"content": None, "embed": embed, "attachments": [preview], "view": view}


BROWSE_LABELS = {"prev": "◀ Previous", "next": "Next ▶", "edit": "✏️ Edit tags", "remove": "🗑️ Remove picture"}


class BrowseButton(ReportsErrors, discord.ui.DynamicItem[discord.ui.Button],
                   template=r"lb:ib:(?P<project_id>\d+):(?P<index>\d+):(?P<image_id>\d+):(?P<action>prev|next|edit|remove)"):
    def __init__(self, project_id: int, index: int, image_id: int, action: str) -> None:
        self.project_id, self.index, self.image_id, self.action = project_id, index, image_id, action
        style = discord.ButtonStyle.danger if action == "remove" else discord.ButtonStyle.secondary
        super().__init__(discord.ui.Button(label=BROWSE_LABELS[action], style=style,
                                           custom_id=f"lb:ib:{project_id}:{index}:{image_id}:{action}"))

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str], /) -> BrowseButton:
        return cls(int(match["project_id"]), int(match["index"]), int(match["image_id"]), match["action"])

    async def handle(self, interaction: discord.Interaction) -> None:
        engine = engine_of(interaction)
        actor = actor_of(interaction)
        if self.action == "edit":
            project = await engine.get_project_by_id(actor, self.project_id)
            current = (await engine.captions(actor, project.name, "train")).get(self.image_id, "")
            await interaction.response.send_modal(EditTagsModal(self.project_id, self.index, self.image_id, current))
            return
        note = ""
        index = self.index + {"prev": -1, "next": 1}.get(self.action, 0)
        if self.action == "remove":
            removed = await engine.remove_image(actor, self.project_id, self.image_id)
            note = f"🗑️ Removed `{shown_name(removed.source)}`."
        await interaction.response.defer()
        await interaction.edit_original_response(**await browse_message(interaction, self.project_id, index, note))


class EditTagsModal(discord.ui.Modal):
    def __init__(self, project_id: int, index: int, image_id: int, current: str) -> None:
        super().__init__(title="Edit tags", timeout=900)
        self.project_id, self.index, self.image_id = project_id, index, image_id
        self.text = discord.ui.TextInput(label="Tags, separated by commas", style=discord.TextStyle.paragraph,
                                         default=current[:4000], max_length=4000, custom_id="tags")
        self.add_item(self.text)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        engine = engine_of(interaction)
        result = await engine.curation.edit_caption(actor_of(interaction), self.project_id, self.image_id,
                                                    self.text.value)
        await interaction.response.defer()
        await interaction.edit_original_response(
            **await browse_message(interaction, self.project_id, self.index, f"✏️ {result.description}"))

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:
        await report_error(interaction, error)
