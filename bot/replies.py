"""Answering an interaction whatever state it is in, and turning errors into messages a member can
act on. Every handler (commands, buttons) ends up here when something goes wrong."""
from __future__ import annotations

import contextlib
import logging
import secrets

import discord
from discord import app_commands

from engine.errors import UserError

log = logging.getLogger(__name__)


class Refused(app_commands.CheckFailure):
    """A check said no; the text says why and what to do."""


async def reply(interaction: discord.Interaction, content: str | None = None, *, ephemeral: bool = True,
                embed: discord.Embed | None = None, view: discord.ui.View | None = None) -> None:
    kwargs: dict = {"content": content, "ephemeral": ephemeral}
    if embed is not None:
        kwargs["embed"] = embed
    if view is not None:
        kwargs["view"] = view
    if interaction.response.is_done():
        await interaction.followup.send(**kwargs)
    else:
        await interaction.response.send_message(**kwargs)


def describe_error(error: BaseException) -> str:
    """The member-facing text for an error raised while handling their interaction."""
    original = error
    while isinstance(original, (app_commands.CommandInvokeError, app_commands.TransformerError)) and original.__cause__:
        original = original.__cause__
    if isinstance(original, UserError):
        return f"❌ {original}"
    if isinstance(original, Refused):
        return f"🚫 {original}"
    if isinstance(original, app_commands.CommandOnCooldown):
        return f"🐢 Slow down a little: try again in {original.retry_after:.0f} s."
    if isinstance(original, app_commands.CheckFailure):
        return "🚫 You can't use this command here."
    incident = secrets.token_hex(3)
    log.error("unexpected error (incident %s)", incident, exc_info=original)
    return (f"💥 Something went wrong on our side (incident `{incident}`). Nothing of yours was changed; "
            "try again, and if it keeps happening tell the server owner the incident code.")


async def defer_publicly(interaction: discord.Interaction) -> None:
    """Defers a command whose answer (a job's status) the channel should see. Should it be refused
    instead, report_error takes the public "thinking…" away and tells only the member why."""
    interaction.extras["deferred_publicly"] = True
    await interaction.response.defer(thinking=True)


async def report_error(interaction: discord.Interaction, error: BaseException) -> None:
    text = describe_error(error)
    try:
        if interaction.extras.get("deferred_publicly") and interaction.response.is_done():
            # Already gone (deleted by a moderator): the private answer still goes out.
            with contextlib.suppress(discord.HTTPException):
                await interaction.delete_original_response()
        await reply(interaction, text)
    except discord.HTTPException:
        log.warning("could not tell user %s about an error: %s", interaction.user.id, text)


class ReportsErrors:
    """Mixed into each button: errors raised by a click become a clear ephemeral reply."""

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await self.handle(interaction)
        except Exception as error:  # noqa: BLE001 - every failure is reported to the clicker
            await report_error(interaction, error)

    async def handle(self, interaction: discord.Interaction) -> None:
        raise NotImplementedError
