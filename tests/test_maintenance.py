"""Retention clean-up: Engine.run_maintenance and engine.maintenance.Maintenance.clean_up delete finished
jobs past retention (with their logs and events) and expired download links; everything else stays."""
from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.config import Config, RetentionConfig
from engine.errors import Invalid, NotFound
from engine.facade import Engine
from engine.links import new_token_id
from engine.maintenance import Maintenance
from storage import artifacts as artifact_rows
from storage.layout import atomic_write_bytes
from tests.conftest import ALICE_ACTOR, BOB_ACTOR

NOTHING = {"jobs_removed": 0, "links_expired": 0, "plans_expired": 0, "staging_expired": 0}   # a clean-up's stats

DAY = 86400.0


@pytest.fixture
async def idle(config: Config) -> AsyncIterator[Engine]:
    """An engine with no scheduler running: jobs stay where the test puts them."""
    config = dataclasses.replace(config, retention=RetentionConfig(finished_jobs_days=2.0))
    engine = await Engine.open(config)
    yield engine
    await engine.close()


async def _job(engine: Engine, state: str, finished_days_ago: float | None, *, actor=ALICE_ACTOR) -> int:
    """A job in `state`, its finished_at (and created/started) moved into the past, with a log file."""
    job = await engine.enqueue(actor, "quick")
    if state == "cancelled":
        await engine.cancel(actor, job.id)
    now = time.time()
    ago = now - (finished_days_ago or 0) * DAY
    finished = ago if state in ("done", "failed", "cancelled") else None
    await engine._db.execute(
        "UPDATE jobs SET state = ?, created_at = ?, started_at = ?, finished_at = ? WHERE id = ?",
        (state, ago - 60, ago - 30 if state != "queued" else None, finished, job.id),
    )
    engine.layout.job_log(job.id).write_text(f"log of job {job.id}\n")
    return job.id


async def _ids(engine: Engine) -> set[int]:
    return {row[0] for row in await engine._db.fetchall("SELECT id FROM jobs")}


async def test_old_finished_jobs_go_with_their_logs_and_others_stay(idle: Engine) -> None:
    old_done = await _job(idle, "done", 3)
    old_failed = await _job(idle, "failed", 10)
    old_cancelled = await _job(idle, "cancelled", 2.5, actor=BOB_ACTOR)
    recent_done = await _job(idle, "done", 1)
    recent_cancelled = await _job(idle, "cancelled", 0)
    old_queued = await _job(idle, "queued", 30)     # waited a month, still waiting: kept
    old_running = await _job(idle, "running", 30)   # started long ago, still running: kept
    await idle.attach_status_message(old_done, 555, 666)
    old = {old_done, old_failed, old_cancelled}
    kept = {recent_done, recent_cancelled, old_queued, old_running}

    stats = await idle.run_maintenance()

    assert stats == dict(NOTHING, jobs_removed=3)
    assert await _ids(idle) == kept
    for job_id in old:
        assert not idle.layout.job_log(job_id).exists()
        assert await idle.job_events(job_id) == []
    assert await idle.status_message(old_done) is None
    for job_id in kept:
        assert idle.layout.job_log(job_id).read_text() == f"log of job {job_id}\n"
        assert [e.type for e in await idle.job_events(job_id)][0] == "queued"
    assert {job.id for job in await idle.jobs(include_finished=True)} == kept

    # Nothing more to do: the second run removes nothing.
    assert await idle.run_maintenance() == NOTHING
    assert await _ids(idle) == kept


async def test_missing_log_file_does_not_stop_clean_up(idle: Engine) -> None:
    job_id = await _job(idle, "done", 5)
    idle.layout.job_log(job_id).unlink()
    assert (await idle.run_maintenance())["jobs_removed"] == 1
    assert await _ids(idle) == set()


async def test_retention_setting_is_respected(config: Config) -> None:
    config = dataclasses.replace(config, retention=RetentionConfig(finished_jobs_days=10.0))
    engine = await Engine.open(config)
    try:
        five_days = await _job(engine, "done", 5)
        eleven_days = await _job(engine, "done", 11)
        assert await engine.run_maintenance() == dict(NOTHING, jobs_removed=1)
        assert await _ids(engine) == {five_days}
        assert not engine.layout.job_log(eleven_days).exists()
    finally:
        await engine.close()


async def _artifact(engine: Engine) -> int:
    project = await engine.create_project(ALICE_ACTOR, "Xing", "xg", "man")
    atomic_write_bytes(Path(project.path) / "output" / "Xing-01.safetensors", b"weights")
    async with engine._db.transaction() as tx:
        return await artifact_rows.upsert(tx, project_id=project.id, job_id=None, kind="lora",
                                          path="output/Xing-01.safetensors", size=7, sha256="x")


async def _link(engine: Engine, artifact_id: int, expires_at: float) -> str:
    token_id = new_token_id()
    async with engine._db.transaction() as tx:
        await artifact_rows.insert_link(tx, token_id, artifact_id, ALICE_ACTOR.user_id, expires_at)
    return token_id


async def _link_ids(engine: Engine) -> set[str]:
    return {row[0] for row in await engine._db.fetchall("SELECT token_id FROM download_links")}


async def test_expired_links_are_deleted_and_live_ones_kept(idle: Engine) -> None:
    artifact_id = await _artifact(idle)
    now = time.time()
    expired = {await _link(idle, artifact_id, now - 1), await _link(idle, artifact_id, now - 30 * DAY)}
    live = await _link(idle, artifact_id, now + 3600)
    issued = await idle.download_link(ALICE_ACTOR, artifact_id)  # the real path: ttl in the future
    assert len(await _link_ids(idle)) == 4

    stats = await idle.run_maintenance()

    assert stats == dict(NOTHING, links_expired=2)
    remaining = await _link_ids(idle)
    assert live in remaining and not (expired & remaining) and len(remaining) == 2
    assert idle.links.verify(issued.rsplit("/d/", 1)[1], time.time()).token_id in remaining
    # The artifact and its file are untouched.
    assert [a.id for a in await idle.artifacts(ALICE_ACTOR, "Xing")] == [artifact_id]
    assert (Path((await idle.get_project(ALICE_ACTOR, "Xing")).path) / "output" / "Xing-01.safetensors").is_file()


async def test_clean_up_returns_the_same_stats(idle: Engine) -> None:
    artifact_id = await _artifact(idle)
    await _link(idle, artifact_id, time.time() - 10)
    await _job(idle, "done", 3)
    await _job(idle, "failed", 4)
    kept = await _job(idle, "done", 0.5)
    maintenance = Maintenance(idle, idle.config.retention.maintenance_interval_minutes)

    assert await maintenance.clean_up() == dict(NOTHING, jobs_removed=2, links_expired=1)
    assert await _ids(idle) == {kept}
    assert await _link_ids(idle) == set()
    assert await maintenance.clean_up() == NOTHING


async def test_maintenance_scheduler_starts_and_stops(idle: Engine) -> None:
    maintenance = Maintenance(idle, 0.5)
    maintenance.start()
    try:
        assert maintenance._scheduler.running
        jobs = {job.id: job for job in maintenance._scheduler.get_jobs()}
        assert set(jobs) == {"clean_up", "positions"}
        assert jobs["clean_up"].trigger.interval.total_seconds() == 30
    finally:
        maintenance.stop()
    maintenance.stop()  # a second stop is harmless


async def test_staged_pictures_expire_after_an_hour(engine: Engine) -> None:
    from engine.dataset import STAGING_TTL_S
    from engine.intake import IncomingFile


    fresh = engine.stage_images(ALICE_ACTOR, [IncomingFile("a.png", b"1")])
    stale = engine.stage_images(ALICE_ACTOR, [IncomingFile("b.png", b"2")])
    old = time.time() - STAGING_TTL_S - 60
    os.utime(engine.layout.root / "staging" / stale, (old, old))
    assert (await engine.run_maintenance())["staging_expired"] == 1
    with pytest.raises(NotFound, match="no longer waiting"):
        engine.staging.take(ALICE_ACTOR.user_id, stale)
    with pytest.raises(NotFound):
        engine.staging.take(BOB_ACTOR.user_id, fresh)  # someone else's staged pictures
    assert engine.staging.take(ALICE_ACTOR.user_id, fresh) == [IncomingFile("a.png", b"1")]


async def test_old_training_plans_expire_and_new_ones_still_start(idle: Engine) -> None:
    """A plan's Start button works for [retention] training_plans_days; older plans are dropped (they no
    longer outlive anything: a deleted project takes its plans with it)."""
    await idle.create_project(ALICE_ACTOR, "Plans", "Plns", "man")
    old = await idle.training.remember(ALICE_ACTOR, "Plans", {"epochs": "2"})
    fresh = await idle.training.remember(ALICE_ACTOR, "Plans", {"epochs": "3"})
    async with idle._db.transaction() as tx:
        await tx.execute("UPDATE training_plans SET created_at = ? WHERE token = ?", (time.time() - 15 * DAY, old))
    stats = await idle.run_maintenance()
    assert stats["plans_expired"] == 1
    with pytest.raises(NotFound, match="no longer exists: run /lora train again"):
        await idle.training.start_remembered(ALICE_ACTOR, old)
    # The fresh one is kept; starting it is refused here (no pictures), and the refusal leaves it usable.
    for _ in range(2):
        with pytest.raises(Invalid, match="no training pictures"):
            await idle.training.start_remembered(ALICE_ACTOR, fresh)
    await idle.delete_project(ALICE_ACTOR, "Plans")
    assert (await idle._db.fetchone("SELECT COUNT(*) FROM training_plans"))[0] == 0
