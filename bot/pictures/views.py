"""The upload report, and the project picker that "Add to LoRA project" shows."""
from __future__ import annotations

import re

import discord

from bot.access import actor_of
from bot.commands import engine_of
from bot.render import clip
from bot.replies import ReportsErrors
from engine.intake import IntakeReport, Rejected


def intake_embed(project: str, report: IntakeReport, refused_early: list[Rejected]) -> discord.Embed:
    """Accepted/rejected counts, every refused file with its reason, and what was changed on the kept ones."""
    rejected = refused_early + report.rejected
    colour = discord.Colour.green() if not rejected else discord.Colour.orange()
    embed = discord.Embed(title=clip(f"📥 {project}: {len(report.accepted)} added, {len(rejected)} refused", 256),
                          colour=colour)
    if rejected:
        lines = [f"• `{clip(item.name, 60)}` — {item.reason}" for item in rejected]
        embed.add_field(name="Refused", value=_lines_within(lines, 1024), inline=False)
    changed = [f"• `{clip(item.name, 60)}` — {', '.join(item.notes)}" for item in report.accepted if item.notes]
    if changed:
        embed.add_field(name="Adjusted", value=_lines_within(changed, 1024), inline=False)
    if report.accepted:
        embed.description = "Next: `/lora tag` writes a caption for every picture."
    elif not rejected:
        embed.description = "No files came with that upload."
    return embed


def _lines_within(lines: list[str], limit: int) -> str:
    """As many whole lines as fit, then how many more there were."""
    shown: list[str] = []
    for index, line in enumerate(lines):
        more = f"\n…and {len(lines) - index} more"
        if sum(len(s) + 1 for s in shown) + len(line) + len(more) > limit:
            return "\n".join(shown) + more
        shown.append(clip(line, limit - len(more) - 1))
    return "\n".join(shown)


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
        report = await engine_of(interaction).add_staged_images(
            actor_of(interaction), self.token, project)
        await interaction.edit_original_response(content=None, embed=intake_embed(project, report, []), view=None)
