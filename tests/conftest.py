"""Shared fixtures: a fresh config and data folder per test, the test job kinds plugged in, and the
whole service (engine + web + real discord.py bot) running against the loopback fake Discord."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path

# Before anything imports torch, and inherited by every worker process: tiny models gain nothing from a
# second thread, and on a busy 2-core machine OpenMP's spinning threads slow them down about tenfold.
os.environ["OMP_NUM_THREADS"] = "1"

import discord  # noqa: E402
import pytest  # noqa: E402

from bot.app import Service
from engine.config import Config, DiscordConfig, QueueConfig, SamplesConfig, WebConfig
from engine.devtools.tiny_models import TinyModelPaths, write_tiny_models
from engine.facade import Engine
from engine.records import Actor
from tests.fakediscord import FakeDiscord

REPO = Path(__file__).resolve().parent.parent
ALICE, BOB, MOD = 1001, 1002, 1003
ALICE_ACTOR, BOB_ACTOR = Actor(ALICE, "alice"), Actor(BOB, "bob")
MOD_ACTOR = Actor(MOD, "mod", is_admin=True)


@pytest.fixture(autouse=True)
def job_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker processes inherit this environment, so they can import tests.jobkinds too."""
    monkeypatch.setenv("LORABAKE_JOB_PLUGINS", "tests.jobkinds")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModelPaths:
    """Tiny SD1.5, SDXL and tagger models, written once per test run (DESIGN §4)."""
    return write_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(
        data_dir=tmp_path / "data",
        discord=DiscordConfig(status_edit_interval_s=0.2),
        queue=QueueConfig(max_queued_per_user=12, cancel_grace_s=2.0),
        web=WebConfig(port=0),
        # A training would otherwise queue full-size sample grids behind it in every test that trains;
        # the tests of that follow-up turn it on.
        samples=SamplesConfig(auto_after_training=False),
    )


@pytest.fixture
async def engine(config: Config) -> AsyncIterator[Engine]:
    opened = await Engine.open(config)
    await opened.start()
    yield opened
    await opened.close()


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    server = FakeDiscord()
    server.add_member(ALICE, "alice")
    server.add_member(BOB, "bob")
    server.add_member(MOD, "mod", permissions=discord.Permissions(manage_guild=True).value)
    await server.start()
    server.patch_discord()
    yield server
    await server.stop()
    assert server.violations == [], f"the bot broke Discord's rules: {server.violations}"


class Studio:
    """The running service, restartable in place (same data folder, same fake Discord)."""

    def __init__(self, fake: FakeDiscord, config: Config) -> None:
        self.fake = fake
        self.config = dataclasses.replace(
            config, discord=dataclasses.replace(config.discord, token=fake.token, guild_id=fake.guild_id))
        self.service: Service | None = None

    @property
    def engine(self) -> Engine:
        assert self.service is not None and self.service.engine is not None
        return self.service.engine

    async def start(self) -> Studio:
        syncs_before = self.fake.sync_count
        self.service = Service(self.config)
        await self.service.start()
        await self.fake.wait_commands_synced(syncs=syncs_before + 1)  # this bot's own sync: it is logged in
        await self.fake.wait_ready()
        return self

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
            self.service = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()


@pytest.fixture
async def studio(fake: FakeDiscord, config: Config) -> AsyncIterator[Studio]:
    running = await Studio(fake, config).start()
    yield running
    await running.stop()
