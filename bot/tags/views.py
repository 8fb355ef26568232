"""The tag list of a project's pictures, page by page, with buttons that turn the pages."""
from __future__ import annotations

import re

import discord

from bot.access import actor_of
from bot.commands import engine_of
from bot.render import clip
from bot.replies import ReportsErrors
from engine.tagging.analyze import TagCount

TAGS_PER_PAGE = 20


def tag_page_embed(project: str, kind: str, stats: list[TagCount], page: int) -> discord.Embed:
    pages = max(1, -(-len(stats) // TAGS_PER_PAGE))
    page = min(max(page, 0), pages - 1)
    title = f"🏷️ {project} — {'training' if kind == 'train' else 'regularization'} tags"
    embed = discord.Embed(title=clip(title, 256), colour=discord.Colour.gold())
    if not stats:
        embed.description = "No captions yet: run `/lora tag` first."
        return embed
    rows = stats[page * TAGS_PER_PAGE:(page + 1) * TAGS_PER_PAGE]
    embed.description = clip("\n".join(f"`{clip(s.tag, 60)}` — {s.count} ({s.share:.0%})" for s in rows), 4096)
    embed.set_footer(text=f"page {page + 1} of {pages} · {len(stats)} distinct tags")
    return embed


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
        engine = engine_of(interaction)
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
