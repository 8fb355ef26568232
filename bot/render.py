"""How projects and jobs look on Discord. Pure functions from engine records to embeds, kept inside
Discord's limits (embed description 4096, field value 1024)."""
from __future__ import annotations

import datetime as dt

import discord

from engine.intake import IntakeReport, Rejected
from engine.records import Job, Project
from engine.tagging.analyze import TagCount

STATE_STYLE = {
    "queued": ("⏳", discord.Colour.light_grey(), "waiting in the queue"),
    "running": ("⚙️", discord.Colour.blurple(), "running"),
    "done": ("✅", discord.Colour.green(), "finished"),
    "failed": ("❌", discord.Colour.red(), "failed"),
    "cancelled": ("🛑", discord.Colour.dark_grey(), "cancelled"),
}
LANE_NAMES = {"gpu": "GPU", "cpu": "CPU"}


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def progress_bar(step: int, total: int, width: int = 16) -> str:
    share = 0.0 if total <= 0 else min(max(step / total, 0.0), 1.0)
    filled = round(share * width)
    return f"`{'█' * filled}{'░' * (width - filled)}` {share:4.0%}"


def job_line(job: Job) -> str:
    icon, _, state = STATE_STYLE.get(job.state, ("•", None, job.state))
    where = f" · **{job.project_name}**" if job.project_name else ""
    if job.state == "queued" and job.position:
        state = f"#{job.position} in the {LANE_NAMES.get(job.lane, job.lane)} queue"
    elif job.state == "running" and job.progress and job.progress.get("total"):
        state = f"running {job.progress.get('step', 0)}/{job.progress['total']}"
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


def project_embed(project: Project) -> discord.Embed:
    embed = discord.Embed(title=clip(f"📁 {project.name}", 256), colour=discord.Colour.teal())
    embed.add_field(name="Trigger word", value=f"`{project.trigger}`")
    embed.add_field(name="Class", value=clip(project.class_name, 1024))
    embed.add_field(name="Training images", value=str(project.train_images))
    embed.add_field(name="Captioned", value=f"{project.captioned}/{project.train_images + project.reg_images}")
    embed.add_field(name="Reg images", value=str(project.reg_images))
    embed.add_field(name="Active jobs", value=str(project.active_jobs))
    created = dt.datetime.fromtimestamp(project.created_at, dt.UTC)
    embed.set_footer(text="created")
    embed.timestamp = created
    if project.train_images == 0:
        embed.description = "No pictures yet: add 5–200 pictures of your character to start."
    return embed


def project_list_embed(projects: list[Project]) -> discord.Embed:
    embed = discord.Embed(title="Your LoRA projects", colour=discord.Colour.teal())
    if not projects:
        embed.description = "You have no projects yet. Start one with `/lora new`."
        return embed
    lines = [f"**{p.name}** — trigger `{p.trigger}`, class {p.class_name}, {p.train_images} images"
             + (f", {p.active_jobs} active jobs" if p.active_jobs else "") for p in projects]
    embed.description = clip("\n".join(lines), 4096)
    return embed


def queue_embed(jobs: list[Job], *, everyone: bool) -> discord.Embed:
    embed = discord.Embed(title="Queue — everyone" if everyone else "Your jobs", colour=discord.Colour.blurple())
    if not jobs:
        embed.description = "Nothing queued or running." if everyone else "You have no jobs queued or running."
        return embed
    lines = [job_line(job) + (f" · <@{job.user_id}>" if everyone else "") for job in jobs]
    embed.description = clip("\n".join(lines), 4096)
    return embed


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
