"""The persistent, fair, two-lane job queue: real worker subprocesses, real SQLite."""
from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

import pytest

from engine.config import Config
from engine.errors import Forbidden, LimitReached
from engine.facade import Engine
from engine.fairshare import fair_order
from engine.records import EngineEvent
from engine.scheduler import SchedulerBusy
from storage import jobs as job_rows
from storage.jobs import JobRow
from tests.conftest import ALICE, ALICE_ACTOR, BOB, BOB_ACTOR, MOD_ACTOR


async def wait_event(subscription, predicate, timeout: float = 30.0) -> EngineEvent:
    async def scan() -> EngineEvent:
        while True:
            event = await subscription.get()
            if predicate(event):
                return event
    return await asyncio.wait_for(scan(), timeout)


async def wait_file(path: Path, timeout: float = 30.0) -> None:
    async def poll() -> None:
        while not path.exists():
            await asyncio.sleep(0.02)
    await asyncio.wait_for(poll(), timeout)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def row(job_id: int, user_id: int, priority: int = 0) -> JobRow:
    return JobRow(job_id, user_id, None, "quick", "gpu", priority, "queued", {}, None, None, None, 0, None, 0.0,
                  None, None)


def test_fair_order_round_robins_users_and_honours_priority() -> None:
    queued = [row(i, ALICE) for i in range(1, 11)] + [row(11, BOB), row(12, BOB, priority=1)]
    order = [job.id for job in fair_order(queued, last_start={ALICE: 100.0})]
    # Bob's short (priority) job first, then Bob (never served... now served) alternates with Alice.
    assert order[0] == 12
    assert order[:4] == [12, 1, 11, 2]
    assert sorted(order) == list(range(1, 13))


async def test_one_users_ten_jobs_do_not_keep_another_waiting(engine: Engine, tmp_path: Path) -> None:
    events = engine.subscribe()
    gate = tmp_path / "gate"
    first = await engine.enqueue(ALICE_ACTOR, "hold", params={"gate": str(gate)})
    await wait_file(Path(f"{gate}.started"))
    alice_rest = [await engine.enqueue(ALICE_ACTOR, "quick", params={"n": i}) for i in range(9)]
    bob = await engine.enqueue(BOB_ACTOR, "quick")
    assert (await engine.job(bob.id)).position == 1
    assert [(await engine.job(job.id)).position for job in alice_rest[:2]] == [2, 3]

    gate.write_text("go")
    started: list[int] = []
    while len(started) < 11:
        event = await wait_event(events, lambda e: e.type == "started")
        started.append(event.job_id)
    assert started[0] == first.id
    assert started[1] == bob.id, "Bob's one job must start right after Alice's running job"
    assert started[2:] == [job.id for job in alice_rest]


async def test_per_user_queue_limit(engine: Engine, tmp_path: Path) -> None:
    limit = engine.config.queue.max_queued_per_user
    gate = tmp_path / "gate"
    for _ in range(limit):
        await engine.enqueue(ALICE_ACTOR, "hold", params={"gate": str(gate)})
    with pytest.raises(LimitReached, match=f"already have {limit} jobs"):
        await engine.enqueue(ALICE_ACTOR, "quick")
    await engine.enqueue(BOB_ACTOR, "quick")  # the limit is per user
    gate.write_text("go")


async def test_cancel_queued_and_running_jobs(engine: Engine, tmp_path: Path) -> None:
    events = engine.subscribe()
    gate = tmp_path / "gate"
    running = await engine.enqueue(ALICE_ACTOR, "hold", params={"gate": str(gate)})
    await wait_file(Path(f"{gate}.started"))
    pid = int(Path(f"{gate}.started").read_text())
    queued = await engine.enqueue(ALICE_ACTOR, "quick")

    with pytest.raises(Forbidden, match="not yours"):
        await engine.cancel(BOB_ACTOR, running.id)
    cancelled = await engine.cancel(ALICE_ACTOR, queued.id)
    assert cancelled.state == "cancelled" and cancelled.error == "cancelled by you"

    by_mod = await engine.cancel(MOD_ACTOR, running.id)
    assert by_mod.state == "cancelled" and "server admin" in (by_mod.error or "")
    assert not pid_alive(pid), "cancelling must kill the worker process"
    assert (await engine.job(running.id)).state == "cancelled"
    types = [(e.job_id, e.type) async for e in _drain(events)]
    assert (running.id, "cancelled") in types and (running.id, "done") not in types


async def _drain(subscription):
    while True:
        try:
            yield await asyncio.wait_for(subscription.get(), 0.3)
        except TimeoutError:
            return


async def test_worker_crash_fails_only_that_job_and_keeps_its_last_words(engine: Engine) -> None:
    events = engine.subscribe()
    crash = await engine.enqueue(ALICE_ACTOR, "crash")
    after = await engine.enqueue(ALICE_ACTOR, "quick", params={"n": 7})
    failed = await wait_event(events, lambda e: e.job_id == crash.id and e.final)
    assert failed.type == "failed"
    assert "crashed (SIGSEGV)" in failed.data["error"]
    assert "about to crash: last words" in failed.data["log_tail"]
    done = await wait_event(events, lambda e: e.job_id == after.id and e.final)
    assert done.type == "done" and done.data["result"] == {"n": 7}
    log = engine.layout.job_log(crash.id).read_text()
    assert "about to crash" in log


async def test_a_job_is_done_when_its_result_arrives_and_the_next_waits_for_its_exit(config: Config) -> None:
    """A process per job (warm_worker off): the member gets the result before the worker has exited; the lane
    starts its next job only once that process is gone (on one GPU, it still holds the memory)."""
    config = dataclasses.replace(config, queue=dataclasses.replace(config.queue, warm_worker=False))
    engine = await Engine.open(config)
    await engine.start()
    try:
        await _next_waits_for_exit(engine)
    finally:
        await engine.close()


async def _next_waits_for_exit(engine: Engine) -> None:
    events = engine.subscribe()
    slow = await engine.enqueue(ALICE_ACTOR, "slow_exit", params={"exit_s": 1.5})
    after = await engine.enqueue(ALICE_ACTOR, "quick")
    done = await wait_event(events, lambda e: e.job_id == slow.id and e.final)
    pid = done.data["result"]["pid"]
    assert done.type == "done" and pid_alive(pid), "finished while its process was still exiting"
    await wait_event(events, lambda e: e.job_id == after.id and e.type == "started")
    assert not pid_alive(pid), "the next job started only after it had exited"


async def test_job_failure_message_reaches_the_user(engine: Engine) -> None:
    events = engine.subscribe()
    job = await engine.enqueue(ALICE_ACTOR, "fail")
    failed = await wait_event(events, lambda e: e.job_id == job.id and e.final)
    assert failed.type == "failed"
    assert failed.data["error"].startswith("CUDA ran out of memory")
    assert (await engine.job(job.id)).error == failed.data["error"]


async def test_library_prints_do_not_corrupt_the_event_stream(engine: Engine) -> None:
    events = engine.subscribe()
    job = await engine.enqueue(ALICE_ACTOR, "quick", params={"n": 3})
    done = await wait_event(events, lambda e: e.job_id == job.id and e.final)
    assert done.type == "done"
    assert "library noise" in engine.layout.job_log(job.id).read_text()
    logged = [e.data for e in await engine.job_events(job.id) if e.type == "log"]
    assert logged == [{"level": "info", "message": "quick job ran"}]


async def test_restart_requeues_interrupted_jobs_or_fails_them_with_a_reason(config: Config) -> None:
    first = await Engine.open(config)
    resumable = await first.enqueue(ALICE_ACTOR, "hold", params={"gate": "/nonexistent"})
    once = await first.enqueue(ALICE_ACTOR, "once", params={"gate": "/nonexistent"})
    exhausted = await first.enqueue(BOB_ACTOR, "hold", params={"gate": "/nonexistent"})
    # What a process killed mid-run leaves behind: rows in 'running' (written as the scheduler does).
    async with first._db.transaction() as tx:
        await tx.execute("UPDATE jobs SET state = 'running', attempts = 1, started_at = 1, "
                         "progress = '{\"step\": 51, \"total\": 400}' WHERE id IN (?, ?)", (resumable.id, once.id))
        await tx.execute("UPDATE jobs SET state = 'running', attempts = ?, started_at = 1 WHERE id = ?",
                         (config.queue.max_attempts, exhausted.id))
    await first.close()

    second = await Engine.open(config)
    recovered = await second.scheduler.recover()
    assert sorted(recovered) == sorted([resumable.id, once.id, exhausted.id])
    again = await second.job(resumable.id)
    assert again.state == "queued" and "back in the queue (attempt 2 of 2)" in (again.error or "")
    assert (await second.job(once.id)).state == "failed"
    gone = await second.job(exhausted.id)
    assert gone.state == "failed" and "already been tried 2 times" in (gone.error or "")
    kinds = [e.type for e in await second.job_events(resumable.id)]
    assert kinds == ["queued", "requeued"]
    # The next attempt starts with its own progress, and the note saying why it runs again stays.
    async with second._db.transaction() as tx:
        await job_rows.mark_running(tx, resumable.id, None)
    running = await second.job(resumable.id)
    assert running.state == "running" and running.attempts == 2 and not running.progress
    assert running.error == again.error and "lorabake restarted during attempt 1" in running.error
    await second.close()


async def test_only_one_scheduler_per_data_folder(engine: Engine, config: Config) -> None:
    other = await Engine.open(config)
    with pytest.raises(SchedulerBusy, match="another lorabake process"):
        await other.start()
    # …but the other process may still queue and cancel through the database.
    job = await other.enqueue(BOB_ACTOR, "quick")
    await other.close()
    events = engine.subscribe()
    done = await wait_event(events, lambda e: e.job_id == job.id and e.final, timeout=15)
    assert done.type == "done"


async def test_cancel_from_another_process_stops_the_running_worker(engine: Engine, config: Config,
                                                                     tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    job = await engine.enqueue(ALICE_ACTOR, "hold", params={"gate": str(gate)})
    await wait_file(Path(f"{gate}.started"))
    pid = int(Path(f"{gate}.started").read_text())
    cli = await Engine.open(config)
    await cli.cancel(ALICE_ACTOR, job.id)
    await cli.close()

    async def worker_gone() -> None:
        while pid_alive(pid):
            await asyncio.sleep(0.05)
    await asyncio.wait_for(worker_gone(), 10)
    assert (await engine.job(job.id)).state == "cancelled"


async def test_artifacts_are_registered_with_size_and_hash(engine: Engine) -> None:
    await engine.create_project(ALICE_ACTOR, "XingBar30", "XingBar", "man")
    events = engine.subscribe()
    job = await engine.enqueue(ALICE_ACTOR, "artifact", "XingBar30", params={"size": 4096})
    await wait_event(events, lambda e: e.job_id == job.id and e.final)
    [artifact] = await engine.artifacts(ALICE_ACTOR, "XingBar30")
    path = await engine.artifact_path(artifact)
    assert artifact.path == "output/file.bin" and artifact.size == 4096 == path.stat().st_size
    import hashlib
    assert artifact.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


async def test_gpu_jobs_share_a_warm_worker_until_one_fails_or_is_cancelled(engine: Engine, tmp_path: Path) -> None:
    """One long-lived worker runs GPU-lane jobs one after another, each seeing the RNG a fresh process has;
    a failed job and a cancelled one each take it down, and the next job gets a fresh process."""
    events = engine.subscribe()

    async def whoami() -> dict:
        job = await engine.enqueue(ALICE_ACTOR, "whoami")
        done = await wait_event(events, lambda e: e.job_id == job.id and e.final)
        assert done.type == "done", done.data
        return done.data["result"]

    first, second = await whoami(), await whoami()
    assert first["pid"] == second["pid"] and (first["runs"], second["runs"]) == (1, 2)
    assert 1234 not in (first["torch_seed_seen"], second["torch_seed_seen"])   # the first job's seeding is gone
    failed = await engine.enqueue(ALICE_ACTOR, "fail")
    assert (await wait_event(events, lambda e: e.job_id == failed.id and e.final)).type == "failed"
    assert not pid_alive(first["pid"])
    third = await whoami()
    assert third["pid"] != first["pid"] and third["runs"] == 1
    gate = tmp_path / "gate"
    held = await engine.enqueue(ALICE_ACTOR, "hold", params={"gate": str(gate)})
    await wait_file(Path(f"{gate}.started"))
    assert int(Path(f"{gate}.started").read_text()) == third["pid"]
    await engine.cancel(ALICE_ACTOR, held.id)
    await wait_event(events, lambda e: e.job_id == held.id and e.final)
    assert not pid_alive(third["pid"]) and (await whoami())["runs"] == 1
