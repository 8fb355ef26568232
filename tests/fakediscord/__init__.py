"""A loopback fake of Discord's REST + gateway API for end-to-end tests of a real discord.py bot.

Only Discord is faked, at the network boundary; it enforces Discord's limits and records what the bot sent::

    fake = FakeDiscord(upload_limit=10 * 1024 * 1024)
    fake.add_member(ALICE, "alice", permissions=discord.Permissions(manage_guild=True).value)
    await fake.start()
    async with running_bot(fake, MyBot(guild_ready_timeout=0.05)):   # patches discord.py, waits for READY
        await fake.wait_commands_synced()
        it = await fake.slash(ALICE, "lora new", {"name": "X"}, attachments={"file": ("a.png", data)})
        await it.acked()
        message = await it.wait_original(lambda m: "done" in m["content"])
    await fake.stop()
    assert fake.violations == []
"""

from .interactions import InteractionFailed, InteractionRecord
from .server import FakeDiscord
from .testbot import running_bot

__all__ = ["FakeDiscord", "InteractionFailed", "InteractionRecord", "running_bot"]
