"""Periodic upkeep run by apscheduler: retention clean-up, expired links, and a queue-position tick so
status messages of waiting jobs stay current."""
from __future__ import annotations

import logging

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from engine.facade import Engine

log = logging.getLogger(__name__)


class Maintenance:
    def __init__(self, engine: Engine, interval_minutes: float) -> None:
        self._engine = engine
        self._scheduler = AsyncIOScheduler()
        self._scheduler.add_job(self.clean_up, "interval", minutes=interval_minutes, id="clean_up",
                                max_instances=1, coalesce=True)
        self._scheduler.add_job(self._positions_tick, "interval", seconds=60, id="positions",
                                max_instances=1, coalesce=True)

    def start(self) -> None:
        self._scheduler.start()

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    async def clean_up(self) -> dict[str, int]:
        stats = await self._engine.run_maintenance()
        if any(stats.values()):
            log.info("maintenance: %s", stats)
        return stats

    async def _positions_tick(self) -> None:
        self._engine.scheduler.publish_positions()
