"""engine.web + engine.links: a real aiohttp server on a free port, real signed links to files made by a
real job (tests.jobkinds `artifact` run by the real scheduler in a worker process)."""
from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from engine.config import Config
from engine.errors import NotFound
from engine.facade import Engine
from engine.links import LinkSigner, new_token_id
from engine.records import Actor, Job
from engine.web import WebServer
from storage import artifacts as artifact_rows
from storage.artifacts import ArtifactRow
from storage.migrations import LATEST_VERSION
from tests.conftest import ALICE_ACTOR, BOB_ACTOR

JOB_TIMEOUT_S = 30


async def _run(engine: Engine, actor: Actor, kind: str, project: str | None = None,
               params: dict | None = None) -> Job:
    subscription = engine.subscribe()
    try:
        job = await engine.enqueue(actor, kind, project, params)
        async with asyncio.timeout(JOB_TIMEOUT_S):
            async for event in subscription:
                if event.job_id == job.id and event.final:
                    break
    finally:
        subscription.close()
    return await engine.job(job.id)


async def _made_artifact(engine: Engine, actor: Actor = ALICE_ACTOR, project: str = "Xing",
                         size: int = 3000) -> tuple[ArtifactRow, Path]:
    await engine.create_project(actor, project, "xg", "man")
    job = await _run(engine, actor, "artifact", project, {"size": size})
    assert job.state == "done", job.error
    [artifact] = await engine.artifacts(actor, project)
    path = await engine.artifact_path(artifact)
    return artifact, path


def _token(engine: Engine, link: str) -> str:
    prefix = f"{engine.config.web_base_url}/d/"
    assert link.startswith(prefix), link
    return link[len(prefix):]


@pytest.fixture
async def server(engine: Engine) -> AsyncIterator[WebServer]:
    web = WebServer(engine, "127.0.0.1", 0)
    await web.start()
    yield web
    await web.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _url(server: WebServer, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes, dict[str, str]]:
    async with http.get(url) as response:
        return response.status, await response.read(), dict(response.headers)


# --- health ---------------------------------------------------------------------------------------


async def test_server_listens_on_a_real_free_port(server: WebServer) -> None:
    assert server.port != 0


async def test_healthz_reports_ok_and_schema(server: WebServer, http: aiohttp.ClientSession) -> None:
    status, body, headers = await _get(http, _url(server, "/healthz"))
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    health = json.loads(body)
    assert health == {"ok": True, "schema_version": LATEST_VERSION, "queued": 0, "running": 0}


async def test_healthz_and_metrics_count_queued_jobs(config: Config, http: aiohttp.ClientSession) -> None:
    idle = await Engine.open(config)  # no scheduler: enqueued jobs stay queued
    web = WebServer(idle, "127.0.0.1", 0)
    await web.start()
    try:
        for n in range(2):
            await idle.enqueue(ALICE_ACTOR, "quick", params={"n": n})
        status, body, _ = await _get(http, _url(web, "/healthz"))
        assert status == 200 and json.loads(body)["queued"] == 2 and json.loads(body)["running"] == 0
        status, body, headers = await _get(http, _url(web, "/metrics"))
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        assert 'lorabake_jobs{state="queued"} 2' in body.decode().splitlines()
        assert 'lorabake_jobs{state="running"} 0' in body.decode().splitlines()
    finally:
        await web.stop()
        await idle.close()


async def test_unknown_path_is_404(server: WebServer, http: aiohttp.ClientSession) -> None:
    status, _, _ = await _get(http, _url(server, "/nothing-here"))
    assert status == 404


# --- downloads ------------------------------------------------------------------------------------


async def test_download_link_serves_the_exact_bytes(engine: Engine, server: WebServer,
                                                    http: aiohttp.ClientSession) -> None:
    artifact, path = await _made_artifact(engine, size=70_000)
    data = path.read_bytes()
    assert artifact.size == len(data) == 70_000
    assert artifact.sha256 == hashlib.sha256(data).hexdigest()
    assert artifact.path == "output/file.bin"

    link = await engine.download_link(ALICE_ACTOR, artifact.id)
    status, body, headers = await _get(http, _url(server, f"/d/{_token(engine, link)}"))
    assert status == 200
    assert body == data
    assert headers["Content-Disposition"] == 'attachment; filename="file.bin"'
    # A link can be used more than once until it expires.
    status, again, _ = await _get(http, _url(server, f"/d/{_token(engine, link)}"))
    assert status == 200 and again == data


async def test_link_expiry_follows_configured_ttl(engine: Engine) -> None:
    artifact, _ = await _made_artifact(engine)
    before = time.time()
    token = _token(engine, await engine.download_link(ALICE_ACTOR, artifact.id))
    parsed = engine.links.verify(token, time.time())
    assert parsed is not None
    ttl = engine.config.web.link_ttl_hours * 3600
    assert before + ttl - 2 <= parsed.expires_at <= time.time() + ttl + 1
    row = await engine._db.fetchone("SELECT artifact_id, user_id, expires_at FROM download_links WHERE token_id = ?",
                                    (parsed.token_id,))
    assert tuple(row) == (artifact.id, ALICE_ACTOR.user_id, parsed.expires_at)


async def test_tampered_links_are_refused(engine: Engine, server: WebServer, http: aiohttp.ClientSession) -> None:
    artifact, _ = await _made_artifact(engine)
    token = _token(engine, await engine.download_link(ALICE_ACTOR, artifact.id))
    token_id, expires, signature = token.split(".")
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    tampered = [
        f"{token_id}.{expires}.{flipped}",                      # signature edited
        f"{token_id}.{int(expires) + 3600}.{signature}",        # expiry pushed back
        f"{new_token_id()}.{expires}.{signature}",              # another id under this signature
        f"{token_id}.{expires}",                                # signature dropped
        "garbage",
    ]
    for bad in tampered:
        status, body, headers = await _get(http, _url(server, f"/d/{bad}"))
        assert status == 403, bad
        assert b"invalid or has expired" in body
        assert "Content-Disposition" not in headers
    status, _, _ = await _get(http, _url(server, f"/d/{token}"))
    assert status == 200  # the genuine token still works


async def _link_with(engine: Engine, artifact: ArtifactRow, signed_expiry: int, row_expiry: float) -> str:
    token_id = new_token_id()
    async with engine._db.transaction() as tx:
        await artifact_rows.insert_link(tx, token_id, artifact.id, ALICE_ACTOR.user_id, row_expiry)
    return engine.links.sign(token_id, signed_expiry)


async def test_expired_links_are_refused(engine: Engine, server: WebServer, http: aiohttp.ClientSession) -> None:
    artifact, _ = await _made_artifact(engine)
    now = int(time.time())
    fresh = await _link_with(engine, artifact, now + 600, now + 600)
    expired = await _link_with(engine, artifact, now - 5, now - 5)
    revoked = await _link_with(engine, artifact, now + 600, now - 5)  # signature fine, row expired
    no_row = engine.links.sign(new_token_id(), now + 600)             # signed, but never issued
    assert (await _get(http, _url(server, f"/d/{fresh}")))[0] == 200
    for bad in (expired, revoked, no_row):
        status, _, _ = await _get(http, _url(server, f"/d/{bad}"))
        assert status == 403, bad


async def test_link_dies_with_its_project(engine: Engine, server: WebServer, http: aiohttp.ClientSession) -> None:
    artifact, path = await _made_artifact(engine)
    token = _token(engine, await engine.download_link(ALICE_ACTOR, artifact.id))
    assert (await _get(http, _url(server, f"/d/{token}")))[0] == 200

    await engine.delete_project(ALICE_ACTOR, "Xing")

    assert not path.exists()
    assert await engine._db.fetchall("SELECT * FROM download_links") == []
    status, _, _ = await _get(http, _url(server, f"/d/{token}"))
    assert status == 403
    with pytest.raises(NotFound):
        await engine.download_link(ALICE_ACTOR, artifact.id)


async def test_link_to_a_file_removed_from_disk_is_refused(engine: Engine, server: WebServer,
                                                           http: aiohttp.ClientSession) -> None:
    artifact, path = await _made_artifact(engine)
    token = _token(engine, await engine.download_link(ALICE_ACTOR, artifact.id))
    path.unlink()
    status, _, _ = await _get(http, _url(server, f"/d/{token}"))
    assert status == 403


async def test_links_only_for_your_own_files(engine: Engine) -> None:
    artifact, _ = await _made_artifact(engine)
    with pytest.raises(NotFound):
        await engine.download_link(BOB_ACTOR, artifact.id)
    with pytest.raises(NotFound):
        await engine.download_link(ALICE_ACTOR, artifact.id + 1000)
    assert await engine._db.fetchall("SELECT * FROM download_links") == []
    # Bob cannot even see Alice's project's files.
    with pytest.raises(NotFound):
        await engine.artifacts(BOB_ACTOR, "Xing")
    assert await engine.download_link(ALICE_ACTOR, artifact.id)


@pytest.mark.parametrize("bad", ["abc.1.%C3%A9", "abc.%C2%B2.sig", "abc." + "9" * 5000 + ".sig"])
async def test_malformed_tokens_get_403_not_500(server: WebServer, http: aiohttp.ClientSession, bad: str) -> None:
    status, _, _ = await _get(http, _url(server, f"/d/{bad}"))
    assert status == 403


# --- LinkSigner -----------------------------------------------------------------------------------


def test_signer_round_trip_and_expiry() -> None:
    signer = LinkSigner(b"secret")
    token = signer.sign("abc_-123", 2_000)
    parsed = signer.verify(token, 1_999.5)
    assert parsed is not None and (parsed.token_id, parsed.expires_at) == ("abc_-123", 2_000)
    assert signer.verify(token, 2_000) is None        # expiry is exclusive
    assert signer.verify(token, 5_000) is None
    assert LinkSigner(b"other secret").verify(token, 0) is None


@pytest.mark.parametrize("bad", [
    "", ".", "..", "...", "a.b", "a.1.b.c", "abc.x.sig", "abc.-5.sig", "abc.1e3.sig", "abc. 5.sig", "abc.+5.sig",
    "abc.5.", ".5.sig",
])
def test_verify_rejects_malformed_tokens(bad: str) -> None:
    assert LinkSigner(b"secret").verify(bad, 0) is None


def test_verify_rejects_token_signed_for_another_id_or_expiry() -> None:
    signer = LinkSigner(b"secret")
    token_id, expires, signature = signer.sign("id1", 9_999).split(".")
    assert signer.verify(f"id2.{expires}.{signature}", 0) is None
    assert signer.verify(f"{token_id}.9998.{signature}", 0) is None
    assert signer.verify(f"{token_id}.{expires}.{signature.upper()}", 0) is None


@pytest.mark.parametrize("bad", ["abc.1.\u00e9", "abc.\u00b2.sig", "abc." + "9" * 5000 + ".sig"])
def test_verify_rejects_non_ascii_and_huge_tokens(bad: str) -> None:
    assert LinkSigner(b"secret").verify(bad, 0) is None


def test_token_ids_are_unique_and_url_safe() -> None:
    ids = {new_token_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) >= 16 and "." not in i and "/" not in i for i in ids)


def test_signer_from_config_uses_configured_secret_or_a_kept_file(tmp_path: Path) -> None:
    configured = LinkSigner.from_config("s3cret", tmp_path / "unused.key")
    assert not (tmp_path / "unused.key").exists()
    assert LinkSigner(b"s3cret").verify(configured.sign("x", 100), 0) is not None

    key = tmp_path / "data" / "secret.key"
    first = LinkSigner.from_config("", key)
    assert key.is_file() and len(key.read_bytes()) == 32
    assert key.stat().st_mode & 0o777 == 0o600
    second = LinkSigner.from_config("", key)  # a restart: same secret, old links still work
    assert second.verify(first.sign("x", 100), 0) is not None
    other = LinkSigner.from_config("", tmp_path / "other" / "secret.key")
    assert other.verify(first.sign("x", 100), 0) is None
