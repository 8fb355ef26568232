"""Running a discord.py client against a FakeDiscord for the length of an ``async with``."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, AsyncIterator, TypeVar

import discord

if TYPE_CHECKING:
    from .server import FakeDiscord

ClientT = TypeVar("ClientT", bound=discord.Client)


@contextlib.asynccontextmanager
async def running_bot(fake: FakeDiscord, client: ClientT, timeout: float = 10.0) -> AsyncIterator[ClientT]:
    """Starts ``client`` with the fake's token, waits until the fake sent READY, and closes it afterwards.

    Fails at once, with the client's own exception, if it dies while logging in or in ``setup_hook``.
    Build the client with ``guild_ready_timeout=0.05``: discord.py otherwise waits 2 s after the last
    GUILD_CREATE before ``on_ready``.
    """
    fake.patch_discord()
    task = asyncio.create_task(client.start(fake.token), name="fakediscord-bot")
    ready = asyncio.create_task(fake.wait_ready(timeout))
    try:
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises what killed the client
            raise RuntimeError("the client stopped before it was ready")
        ready.result()
        yield client
    finally:
        ready.cancel()
        await client.close()
        await task
