"""The engine's small HTTP server: health, metrics, and signed download links for files that are
over Discord's upload limit."""
from __future__ import annotations

import json

from aiohttp import web

from engine.facade import Engine

ENGINE_KEY = web.AppKey("engine", Engine)


def create_app(engine: Engine) -> web.Application:
    app = web.Application()
    app[ENGINE_KEY] = engine
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/d/{token}", _download)
    return app


async def _healthz(request: web.Request) -> web.Response:
    health = await request.app[ENGINE_KEY].health()
    return web.Response(text=json.dumps(health), content_type="application/json")


async def _metrics(request: web.Request) -> web.Response:
    health = await request.app[ENGINE_KEY].health()
    lines = [
        "# HELP lorabake_jobs Jobs by state.",
        "# TYPE lorabake_jobs gauge",
        f'lorabake_jobs{{state="queued"}} {health["queued"]}',
        f'lorabake_jobs{{state="running"}} {health["running"]}',
    ]
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


async def _download(request: web.Request) -> web.StreamResponse:
    path = await request.app[ENGINE_KEY].resolve_download(request.match_info["token"])
    if path is None:
        # One answer for forged, expired, revoked and deleted: a prober learns nothing.
        return web.Response(status=403, text="This download link is invalid or has expired. "
                                             "Ask the bot for a new one with /lora download.\n")
    return web.FileResponse(path, headers={"Content-Disposition": f'attachment; filename="{path.name}"'})


class WebServer:
    def __init__(self, engine: Engine, host: str, port: int) -> None:
        self._runner = web.AppRunner(create_app(engine), access_log=None)
        self._host = host
        self._port = port
        self.port = port

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server
        if server is not None and server.sockets:  # port 0 means "any free port": learn which
            self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await self._runner.cleanup()
