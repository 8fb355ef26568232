"""`lorabake run`: the engine, its HTTP server, maintenance and the Discord bot in one process
(jobs themselves run in worker subprocesses)."""
from __future__ import annotations

import asyncio
import logging
import signal

from bot.client import LoraBot
from engine.config import Config
from engine.facade import Engine
from engine.maintenance import Maintenance
from engine.web import WebServer

log = logging.getLogger(__name__)


class Service:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.engine: Engine | None = None
        self.bot: LoraBot | None = None
        self.web: WebServer | None = None
        self._maintenance: Maintenance | None = None
        self._bot_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        engine = self.engine = await Engine.open(self.config)
        # The bot subscribes to engine events before the engine starts, so that it sees what
        # recovery does to jobs the last run left behind and can tell their owners.
        self.bot = LoraBot(engine, self.config)
        await engine.start()
        if self.config.web.enabled:
            self.web = WebServer(engine, self.config.web.host, self.config.web.port)
            await self.web.start()
            if not self.config.web.public_url:
                engine.public_url = f"http://{self.config.web.host}:{self.web.port}"
        self._maintenance = Maintenance(engine, self.config.retention.maintenance_interval_minutes)
        self._maintenance.start()
        self._bot_task = asyncio.create_task(self.bot.start(self.config.discord.token), name="discord")

    async def wait(self) -> None:
        """Until the bot stops (a fatal Discord error such as a bad token re-raises here)."""
        assert self._bot_task is not None
        await self._bot_task

    async def stop(self) -> None:
        if self.bot is not None:
            await self.bot.close()
        if self._bot_task is not None:
            await asyncio.gather(self._bot_task, return_exceptions=True)
        if self._maintenance is not None:
            self._maintenance.stop()
        if self.web is not None:
            await self.web.stop()
        if self.engine is not None:
            await self.engine.close()


async def run_service(config: Config) -> None:
    service = Service(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await service.start()
        assert service.engine is not None
        log.info("lorabake is running; data in %s; downloads at %s", config.data_dir, config.web_base_url)
        waiter = asyncio.create_task(stop.wait())
        bot_task = asyncio.create_task(service.wait())
        done, _ = await asyncio.wait({waiter, bot_task}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if bot_task in done:
            bot_task.result()
    finally:
        await service.stop()
