"""How a job looks on Discord — its status embed, its line in /lora queue, its Cancel button — and the one
way a command or click shows the job it queued (StatusMessages keeps that message current afterwards)."""
from __future__ import annotations

import datetime as dt
import re

import discord

from bot.access import actor_of
from bot.commands import engine_of, lora_bot
from bot.render import clip
from bot.replies import ReportsErrors
from engine.records import Job

STATE_STYLE = {
    "queued": ("⏳", discord.Colour.light_grey(), "waiting in the queue"),
    "running": ("⚙️", discord.Colour.blurple(), "running"),
    "done": ("✅", discord.Colour.green(), "finished"),
    "failed": ("❌", discord.Colour.red(), "failed"),
    "cancelled": ("🛑", discord.Colour.dark_grey(), "cancelled"),
}

LANE_NAMES = {"gpu": "GPU", "cpu": "CPU"}


def progress_bar(step: int, total: int, width: int = 16) -> str:
    share = 0.0 if total <= 0 else min(max(step / total, 0.0), 1.0)
    filled = round(share * width)
    return f"`{'█' * filled}{'░' * (width - filled)}` {share:4.0%}"


def job_line(job: Job) -> str:
    icon, _, state = STATE_STYLE.get(job.state, ("•", None, job.state))
    where = f" · **{job.project_name}**" if job.project_name else ""
    if job.state == "queued" and job.position:
        state = f"#{job.position} in the {LANE_NAMES.get(job.lane, job.lane)} queue"
    elif job.interrupted:
        state = "interrupted: it goes on when the bot starts"
    elif job.state == "running" and job.progress and job.progress.get("total"):
        state = f"running {job.progress.get('step', 0)}/{job.progress['total']}"
    if job.state == "running" and job.progress and job.progress.get("node"):
        state += f" on {job.progress['node']}"   # a GPU machine of the cluster
    return f"{icon} `#{job.id}` {job.title}{where} — {state}"


def job_embed(job: Job) -> discord.Embed:
    icon, colour, state = STATE_STYLE.get(job.state, ("•", discord.Colour.default(), job.state))
    if job.state == "queued" and job.position:
        state = f"#{job.position} in the {LANE_NAMES.get(job.lane, job.lane)} queue"
    embed = discord.Embed(title=clip(f"{icon} {job.title} #{job.id} — {state}", 256), colour=colour)
    if job.project_name:
        embed.add_field(name="Project", value=clip(job.project_name, 1024))
    embed.add_field(name="Owner", value=f"<@{job.user_id}>")
    progress = job.progress or {}
    if job.state == "running" and progress.get("node"):
        embed.add_field(name="GPU machine", value=clip(str(progress["node"]), 1024))
    if job.state == "running" and progress.get("total"):
        lines = [progress_bar(int(progress.get("step", 0)), int(progress["total"])),
                 f"step {progress.get('step', 0)}/{progress['total']}"]
        if progress.get("message"):
            lines.append(str(progress["message"]))
        for key, label in (("loss", "loss"), ("it_s", "it/s")):
            if isinstance(progress.get(key), (int, float)):
                lines.append(f"{label} {progress[key]:.4g}")
        if isinstance(progress.get("eta_s"), (int, float)):
            lines.append(f"ETA {dt.timedelta(seconds=round(progress['eta_s']))}")
        embed.add_field(name="Progress", value=clip("\n".join(lines), 1024), inline=False)
    if job.error:
        # An active job's error is the note its last requeue left; a finished one's says why it ended.
        embed.add_field(name="Note" if job.active else "Why", value=clip(job.error, 1024), inline=False)
    if job.state == "done" and job.result:
        embed.add_field(name="Result", value=clip(result_text(job.result), 1024), inline=False)
    if job.kept_files:
        embed.add_field(name="Kept", value=clip(", ".join(f"`{name}`" for name in job.kept_files)
                                                 + " — /lora download hands them out", 1024), inline=False)
    embed.set_footer(text=f"job #{job.id} · attempt {max(job.attempts, 1)}")
    return embed


def result_text(result: dict) -> str:
    """A job's result as lines; a ranking like top_tags [[tag, count], …] becomes `tag` ×count."""
    lines = []
    for key, value in list(result.items())[:12]:
        if isinstance(value, list) and all(isinstance(pair, list) and len(pair) == 2 for pair in value):
            value = ", ".join(f"`{tag}` ×{count}" for tag, count in value)
        lines.append(f"**{key.replace('_', ' ')}**: {value}")
    return "\n".join(lines)


class CancelJobButton(ReportsErrors, discord.ui.DynamicItem[discord.ui.Button], template=r"lb:cancel:(?P<job_id>\d+)"):
    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        super().__init__(discord.ui.Button(label="Cancel", style=discord.ButtonStyle.secondary, emoji="🛑",
                                           custom_id=f"lb:cancel:{job_id}"))

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str], /) -> CancelJobButton:
        return cls(int(match["job_id"]))

    async def handle(self, interaction: discord.Interaction) -> None:
        engine = engine_of(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        job = await engine.cancel(actor_of(interaction), self.job_id)
        await interaction.followup.send(f"🛑 Job #{job.id} ({job.title}) was cancelled.", ephemeral=True)


def job_view(job_id: int, active: bool) -> discord.ui.View | None:
    """The buttons under a job's status message: Cancel while it can still be cancelled."""
    if not active:
        return None
    view = discord.ui.View(timeout=None)
    view.add_item(CancelJobButton(job_id))
    return view


async def show_job(interaction: discord.Interaction, job: Job) -> None:
    """Answers the (deferred) interaction that queued `job` with its status message, Cancel button included,
    and hands the message to StatusMessages, which edits it until the job ends."""
    message = await interaction.edit_original_response(embed=job_embed(job), view=job_view(job.id, True))
    await lora_bot(interaction).status_messages.track(job, message)
