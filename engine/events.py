"""In-process publish/subscribe for engine events. Each subscriber gets its own unbounded queue, so a
slow subscriber (the bot waiting on Discord's rate limits) never blocks the scheduler."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from engine.records import EngineEvent


class Subscription:
    def __init__(self, bus: EventBus) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[EngineEvent] = asyncio.Queue()

    def put(self, event: EngineEvent) -> None:
        self._queue.put_nowait(event)

    async def get(self) -> EngineEvent:
        return await self._queue.get()

    def close(self) -> None:
        self._bus._subscribers.discard(self)

    async def __aiter__(self) -> AsyncIterator[EngineEvent]:
        while True:
            yield await self._queue.get()


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()

    def subscribe(self) -> Subscription:
        subscription = Subscription(self)
        self._subscribers.add(subscription)
        return subscription

    def publish(self, event: EngineEvent) -> None:
        for subscription in list(self._subscribers):
            subscription.put(event)
