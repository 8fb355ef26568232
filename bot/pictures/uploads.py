"""Turning what a member attached on Discord into files for the engine, with a live progress line
for big uploads and a compact report of what was kept and what was refused (and why)."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

import discord

from engine.intake import IncomingFile, IntakeReport, Rejected

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".zip")
PROGRESS_EVERY_S = 2.0


def looks_uploadable(attachment: discord.Attachment) -> bool:
    """Attachments worth offering to the engine (it decides by content; this only skips obvious others)."""
    content_type = (attachment.content_type or "").split(";")[0]
    return content_type.startswith("image/") or content_type == "application/zip" or \
        attachment.filename.lower().endswith(PICTURE_SUFFIXES)


async def download(attachments: Sequence[discord.Attachment],
                   max_bytes: int) -> tuple[list[IncomingFile], list[Rejected]]:
    """Reads the attachments, refusing those over the size limit before downloading them."""
    files: list[IncomingFile] = []
    refused: list[Rejected] = []
    for attachment in attachments:
        if attachment.size > max_bytes:
            refused.append(Rejected(attachment.filename,
                                    f"too big ({attachment.size / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} "
                                    "MB): send a smaller file or split the zip"))
            continue
        try:
            files.append(IncomingFile(attachment.filename, await attachment.read()))
        except discord.HTTPException:
            refused.append(Rejected(attachment.filename, "Discord would not hand the file over: send it again"))
    return files, refused


async def with_progress(run: Callable[[Callable[[int, int], None]], Awaitable[IntakeReport]],
                        show: Callable[[str], Awaitable[None]]) -> IntakeReport:
    """Runs an intake while `show` is called every few seconds with "checked N of M pictures"."""
    counts = {"done": 0, "total": 0}

    def progress(done: int, total: int) -> None:
        counts.update(done=done, total=total)

    async def report_progress() -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            if counts["total"]:
                await show(f"⏳ Checked {counts['done']} of {counts['total']} pictures…")

    ticker = asyncio.create_task(report_progress())
    try:
        return await run(progress)
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError, discord.HTTPException):
            await ticker
