"""The gateway websocket: HELLO, IDENTIFY -> READY + GUILD_CREATE, heartbeats, then dispatches.

Frames are plain JSON text. discord.py asks for ``compress=zstd-stream`` (or zlib-stream) in the URL but
only decompresses *binary* frames; text frames are parsed as they are.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

if TYPE_CHECKING:
    from .server import FakeDiscord

DISPATCH, HEARTBEAT, IDENTIFY, RESUME, REQUEST_MEMBERS, INVALID_SESSION, HELLO, HEARTBEAT_ACK = 0, 1, 2, 6, 8, 9, 10, 11
HEARTBEAT_INTERVAL_MS = 41_250  # Discord's usual value: discord.py's heartbeat thread stays idle in tests
AUTHENTICATION_FAILED = 4004  # a close code discord.py does not reconnect after


class GatewaySession:
    def __init__(self, fake: FakeDiscord, ws: web.WebSocketResponse) -> None:
        self.fake = fake
        self.ws = ws
        self.session_id = secrets.token_hex(16)
        self.sequence = 0
        self.intents = 0
        self.ready = False
        # Frames leave in the order they were queued, so synchronous callers (add_member, ...) and
        # interaction dispatches never overtake each other.
        self._outbox: asyncio.Queue[str] = asyncio.Queue()

    @property
    def open(self) -> bool:
        return not self.ws.closed

    def send(self, op: int, data: Any, event: str | None = None) -> None:
        frame: dict[str, Any] = {"op": op, "d": data, "s": None, "t": None}
        if event is not None:
            self.sequence += 1
            frame.update(s=self.sequence, t=event)
        self._outbox.put_nowait(json.dumps(frame))

    def dispatch(self, event: str, data: Any) -> None:
        self.send(DISPATCH, data, event)

    async def close(self, code: int, message: str) -> None:
        await self.ws.close(code=code, message=message.encode())

    async def serve(self) -> None:
        writer = asyncio.create_task(self._write())
        self.send(HELLO, {"heartbeat_interval": HEARTBEAT_INTERVAL_MS})
        try:
            async for frame in self.ws:
                if frame.type is WSMsgType.TEXT:
                    await self._handle(json.loads(frame.data))
        finally:
            writer.cancel()

    async def _write(self) -> None:
        while True:
            frame = await self._outbox.get()
            try:
                await self.ws.send_str(frame)
            except ConnectionError:
                return  # the bot hung up; nobody is left to read the rest

    async def _handle(self, frame: dict[str, Any]) -> None:
        op, data = frame.get("op"), frame.get("d") or {}
        if op == HEARTBEAT:
            self.send(HEARTBEAT_ACK, None)
        elif op == IDENTIFY:
            if data.get("token") != self.fake.token:
                await self.close(AUTHENTICATION_FAILED, "Authentication failed.")
                return
            self.intents = data.get("intents", 0)
            for event, payload in self.fake.identify_events(self):
                self.dispatch(event, payload)
            self.ready = True
            self.fake.session_changed()
        elif op == RESUME:
            # Sessions are not kept: answer as Discord does for an unknown session; discord.py re-identifies.
            self.send(INVALID_SESSION, False)
        elif op == REQUEST_MEMBERS:
            self.dispatch("GUILD_MEMBERS_CHUNK", self._members_chunk(data))
        # PRESENCE_UPDATE and VOICE_STATE_UPDATE change nothing a test can observe.

    def _members_chunk(self, request: dict[str, Any]) -> dict[str, Any]:
        guild = self.fake.guild
        wanted = {int(user_id) for user_id in request.get("user_ids") or []}
        query = (request.get("query") or "").lower()
        chosen = [
            user_id
            for user_id, user in guild.users.items()
            if (user_id in wanted if wanted else user["username"].lower().startswith(query))
        ]
        limit = request.get("limit") or len(chosen)
        return {
            "guild_id": str(guild.id),
            "members": [guild.member(user_id) for user_id in chosen[:limit]],
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [str(user_id) for user_id in wanted - set(chosen)],
            "nonce": request.get("nonce"),
        }


async def serve_gateway(fake: FakeDiscord, request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    session = GatewaySession(fake, ws)
    fake.sessions.append(session)
    try:
        await session.serve()
    finally:
        fake.sessions.remove(session)
        fake.session_changed()
    return ws
