"""The queue as members see it."""
from __future__ import annotations

import discord

from bot.job_messages import job_line
from bot.render import clip
from engine.records import Job


def queue_embed(jobs: list[Job], *, everyone: bool) -> discord.Embed:
    embed = discord.Embed(title="Queue — everyone" if everyone else "Your jobs", colour=discord.Colour.blurple())
    if not jobs:
        embed.description = "Nothing queued or running." if everyone else "You have no jobs queued or running."
        return embed
    lines = [job_line(job) + (f" · <@{job.user_id}>" if everyone else "") for job in jobs]
    embed.description = clip("\n".join(lines), 4096)
    return embed
