"""kill -9 of the whole lorabake process while a job runs: the worker dies with it, and the next
start re-queues the job, tells its owner in the job's status message, and loses no row."""
from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import discord

from bot.job_messages import job_embed, job_view
from engine.config import load_config
from engine.facade import Engine
from tests.conftest import ALICE_ACTOR, BOB_ACTOR, REPO, Studio
from tests.discord_helpers import text_of
from tests.fakediscord import FakeDiscord

TABLES = ("users", "projects", "images", "captions", "jobs", "job_events", "artifacts", "status_messages",
          "download_links", "settings")


def row_counts(db_path: Path) -> dict[str, int]:
    with sqlite3.connect(db_path) as conn:
        return {table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in TABLES}


async def post_as_bot(fake: FakeDiscord, job) -> discord.Message:
    """A status message sent over REST with the bot's token, as the bot does for /lora commands."""
    client = discord.Client(intents=discord.Intents.none())
    await client.login(fake.token)
    try:
        return await client.get_partial_messageable(fake.channel_id).send(
            embed=job_embed(job), view=job_view(job.id, True))
    finally:
        await client.close()


def pid_gone(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return not status.exists() or "zombie" in status.read_text()


async def until(condition, timeout: float = 30.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.05)
    await asyncio.wait_for(poll(), timeout)


async def test_kill_9_mid_job_then_restart_requeues_and_tells_the_owner(fake: FakeDiscord, tmp_path: Path) -> None:
    config_path = tmp_path / "config.toml"
    config_path.write_text(
        f'data_dir = "data"\n[discord]\ntoken = "{fake.token}"\nguild_id = {fake.guild_id}\n'
        "status_edit_interval_s = 0.2\n[web]\nport = 0\n")
    config = load_config(config_path)

    gate = tmp_path / "gate"
    setup = await Engine.open(config)
    await setup.create_project(ALICE_ACTOR, "XingBar30", "XingBar", "man")
    job = await setup.enqueue(ALICE_ACTOR, "hold", params={"gate": str(gate)})
    waiting = await setup.enqueue(BOB_ACTOR, "quick")
    message = await post_as_bot(fake, job)
    await setup.attach_status_message(job.id, message.channel.id, message.id)
    await setup.close()

    syncs = fake.sync_count
    bot = subprocess.Popen(
        [sys.executable, "-m", "tests.serve_bot", f"{fake.base_url}/api/v10", fake.gateway_url, str(config_path)],
        cwd=REPO, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await until(lambda: Path(f"{gate}.started").exists() or bot.poll() is not None)
        assert bot.poll() is None, bot.stderr.read().decode() if bot.stderr else ""
        worker_pid = int(Path(f"{gate}.started").read_text())
        await fake.wait_for_message(lambda m: m["id"] == str(message.id) and "running" in text_of(m))
        before = row_counts(config.data_dir / "lorabake.db")
        os.kill(bot.pid, signal.SIGKILL)
        bot.wait(10)
    finally:
        if bot.poll() is None:
            bot.kill()
        if bot.stderr:
            bot.stderr.close()
    await until(lambda: pid_gone(worker_pid), timeout=10)  # the orphaned worker noticed and left the GPU
    assert fake.sync_count == syncs + 1

    studio = await Studio(fake, config).start()
    try:
        note = await fake.wait_for_message(
            lambda m: m["id"] == str(message.id) and "back in the queue (attempt 2 of 2)" in text_of(m))
        assert "lb:cancel" in str(note["components"]), "a re-queued job can still be cancelled"
        # Running again, the message still says why, and counts this attempt's own progress.
        again = await fake.wait_for_message(lambda m: m["id"] == str(message.id) and "attempt 2" in text_of(m)
                                            and "running" in text_of(m))
        assert "lorabake restarted during attempt 1" in text_of(again) and "holding" in text_of(again)
        gate.write_text("go")
        await fake.wait_for_message(lambda m: m["id"] == str(message.id) and "finished" in text_of(m), timeout=30)
        final = await studio.engine.job(job.id)
        assert final.state == "done" and final.attempts == 2 and final.result == {"released": True, "attempt": 2}
        await until(lambda: row_counts(config.data_dir / "lorabake.db")["jobs"] == before["jobs"])
        assert (await studio.engine.job(waiting.id)).state in ("queued", "running", "done")
    finally:
        await studio.stop()
    after = row_counts(config.data_dir / "lorabake.db")
    for table, count in before.items():
        assert after[table] >= count, f"{table} lost rows: {count} → {after[table]}"
    assert after["jobs"] == before["jobs"] and after["projects"] == before["projects"] == 1
