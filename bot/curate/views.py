"""The /lora curate screen: a page of tag buttons (count and share shown, ⭐ for tags that look like
the character's fixed traits), click to mark for removal, then Apply; Undo and paging. Everything a
click needs is in its custom_id or the database, so the screen works after a restart; every click
goes through the engine, which only finds the clicker's own projects."""
from __future__ import annotations

import hashlib
import re

import discord

from bot.access import actor_of
from bot.commands import engine_of
from bot.render import clip
from bot.replies import ReportsErrors
from engine.curation_api import CurationView

TAGS_PER_PAGE = 20  # four rows of five; the fifth row holds the controls


def tag_key(tag: str) -> str:
    """A short stable name for a tag in a custom_id (tags can be longer than a custom_id allows)."""
    return hashlib.sha1(tag.encode()).hexdigest()[:10]


def page_count(view: CurationView) -> int:
    return max(1, -(-len(view.stats) // TAGS_PER_PAGE))


def curate_embed(view: CurationView, page: int, note: str = "") -> discord.Embed:
    page = min(max(page, 0), page_count(view) - 1)
    what = "training" if view.kind == "train" else "regularization"
    embed = discord.Embed(title=clip(f"✂️ Curate {view.project} — {what} tags", 256), colour=discord.Colour.gold())
    lines = [f"Trigger word: `{view.trigger}` · {view.images} pictures · {len(view.stats)} distinct tags",
             "Click the tags that describe your character's **fixed looks** (hair, eyes, body…) so the trigger "
             "word absorbs them, then **Apply**. ⭐ = probably the character."]
    if view.selected:
        lines.append("Marked for removal: " + ", ".join(f"`{t}`" for t in view.selected))
    if note:
        lines.append(note)
    embed.description = clip("\n".join(lines), 4096)
    embed.set_footer(text=f"page {page + 1} of {page_count(view)}")
    return embed


def curate_view(view: CurationView, page: int) -> discord.ui.View:
    page = min(max(page, 0), page_count(view) - 1)
    ui = discord.ui.View(timeout=None)
    for index, stat in enumerate(view.stats[page * TAGS_PER_PAGE:(page + 1) * TAGS_PER_PAGE]):
        marked = stat.tag in view.selected
        star = "⭐ " if stat.tag in view.suggested else ""
        label = clip(f"{'✂ ' if marked else star}{stat.tag} {stat.count} ({stat.share:.0%})", 80)
        ui.add_item(TagToggle(view.project_id, view.kind, page, tag_key(stat.tag), label=label, marked=marked,
                              row=index // 5))
    last = page_count(view) - 1
    ui.add_item(CurateControl(view.project_id, view.kind, max(page - 1, 0), "prev", disabled=page == 0))
    ui.add_item(CurateControl(view.project_id, view.kind, min(page + 1, last), "next", disabled=page == last))
    ui.add_item(CurateControl(view.project_id, view.kind, page, "apply", disabled=not view.selected))
    ui.add_item(CurateControl(view.project_id, view.kind, page, "undo"))
    ui.add_item(CurateControl(view.project_id, view.kind, page, "redo"))
    return ui


async def show(interaction: discord.Interaction, project_id: int, kind: str, page: int, note: str = "") -> None:
    engine = engine_of(interaction)
    view = await engine.curation.view(actor_of(interaction), project_id, kind)
    await interaction.response.edit_message(embed=curate_embed(view, page, note), view=curate_view(view, page))


class TagToggle(ReportsErrors, discord.ui.DynamicItem[discord.ui.Button],
                template=r"lb:ct:(?P<project_id>\d+):(?P<kind>train|reg):(?P<page>\d+):(?P<key>[0-9a-f]{10})"):
    def __init__(self, project_id: int, kind: str, page: int, key: str, *, label: str = "tag",
                 marked: bool = False, row: int | None = None) -> None:
        self.project_id, self.kind, self.page, self.key = project_id, kind, page, key
        style = discord.ButtonStyle.danger if marked else discord.ButtonStyle.secondary
        super().__init__(discord.ui.Button(label=label, style=style, row=row,
                                           custom_id=f"lb:ct:{project_id}:{kind}:{page}:{key}"))

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str], /) -> TagToggle:
        return cls(int(match["project_id"]), match["kind"], int(match["page"]), match["key"])

    async def handle(self, interaction: discord.Interaction) -> None:
        engine = engine_of(interaction)
        actor = actor_of(interaction)
        view = await engine.curation.view(actor, self.project_id, self.kind)
        tag = next((s.tag for s in view.stats if tag_key(s.tag) == self.key), None)
        if tag is None:
            await show(interaction, self.project_id, self.kind, self.page, "That tag is gone (already removed?).")
            return
        await engine.curation.toggle(actor, self.project_id, self.kind, tag)
        await show(interaction, self.project_id, self.kind, self.page)


CONTROL_LABELS = {"prev": "◀", "next": "▶", "apply": "✂ Apply", "undo": "↩ Undo", "redo": "↪ Redo"}


class CurateControl(ReportsErrors, discord.ui.DynamicItem[discord.ui.Button],
                    template=r"lb:cc:(?P<project_id>\d+):(?P<kind>train|reg):(?P<page>\d+):(?P<action>prev|next|apply|undo|redo)"):
    def __init__(self, project_id: int, kind: str, page: int, action: str, *, disabled: bool = False) -> None:
        self.project_id, self.kind, self.page, self.action = project_id, kind, page, action
        style = discord.ButtonStyle.success if action == "apply" else discord.ButtonStyle.primary
        super().__init__(discord.ui.Button(label=CONTROL_LABELS[action], style=style, disabled=disabled, row=4,
                                           custom_id=f"lb:cc:{project_id}:{kind}:{page}:{action}"))

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str], /) -> CurateControl:
        return cls(int(match["project_id"]), match["kind"], int(match["page"]), match["action"])

    async def handle(self, interaction: discord.Interaction) -> None:
        engine = engine_of(interaction)
        actor = actor_of(interaction)
        note = ""
        if self.action == "apply":
            note = f"✅ {(await engine.curation.apply_selection(actor, self.project_id, self.kind)).description}"
        elif self.action == "undo":
            note = f"↩ Undone: {(await engine.curation.undo(actor, self.project_id)).description}"
        elif self.action == "redo":
            note = f"↪ Redone: {(await engine.curation.redo(actor, self.project_id)).description}"
        await show(interaction, self.project_id, self.kind, self.page, note)
