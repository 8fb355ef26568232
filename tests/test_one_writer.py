"""One writer per project (engine.core.CONFLICTS): a job that would write a project another queued or running
job writes is refused with a reason naming that job; after a crash the command line shows an interrupted
training as interrupted, then runs that one training on instead of starting a second."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from engine.config import Config
from engine.core import CONFLICTS, JobConflict
from engine.devtools.pictures import picture
from engine.facade import Engine
from tests.conftest import ALICE, ALICE_ACTOR, Studio
from tests.discord_helpers import custom_ids, text_of
from tests.helpers import LORABAKE, TINY, ask, captioned_project, lorabake, lorabake_env, ok_json

KINDS = ("train", "reg", "tag", "samples")


@pytest.fixture
async def idle(config: Config) -> Engine:
    """An engine whose scheduler is not started: queued jobs stay queued."""
    engine = await Engine.open(config)
    for name in ("Alpha", "Beta"):
        await engine.create_project(ALICE_ACTOR, name, name.lower() + "zz", "man")
    yield engine
    await engine.close()


@pytest.mark.parametrize("first", KINDS)
async def test_each_kind_refuses_the_kinds_that_would_write_the_same_project(idle: Engine, first: str) -> None:
    queued = await idle.enqueue(ALICE_ACTOR, first, "Alpha")
    for second in KINDS:
        if second in CONFLICTS[first]:
            with pytest.raises(JobConflict, match=rf"Alpha already has job #{queued.id} \(.*#1 in the queue\).*"
                                                  rf"/lora cancel job:{queued.id}") as refused:
                await idle.enqueue(ALICE_ACTOR, second, "Alpha")
            assert refused.value.job.id == queued.id
        else:   # may overlap: queued beside it
            job = await idle.enqueue(ALICE_ACTOR, second, "Alpha")
            await idle.cancel(ALICE_ACTOR, job.id)
        # Another project is never in the way.
        other = await idle.enqueue(ALICE_ACTOR, second, "Beta")
        await idle.cancel(ALICE_ACTOR, other.id)
    await idle.enqueue(ALICE_ACTOR, "check")   # a job without a project conflicts with nothing
    await idle.cancel(ALICE_ACTOR, queued.id)
    assert (await idle.enqueue(ALICE_ACTOR, first, "Alpha")).state == "queued", "once it is gone, it may run"


def test_the_rule_is_symmetric() -> None:
    assert all(first in CONFLICTS[second] for first, seconds in CONFLICTS.items() for second in seconds)


async def test_two_requests_at_once_give_one_job(idle: Engine) -> None:
    """Checked and inserted in one transaction: of ten simultaneous trainings of one project, one is queued."""
    results = await asyncio.gather(*(idle.enqueue(ALICE_ACTOR, "train", "Alpha") for _ in range(10)),
                                   return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, JobConflict) for r in results if isinstance(r, BaseException))
    assert len([job for job in await idle.jobs(ALICE_ACTOR) if job.kind == "train"]) == 1


@pytest.fixture
def config(config: Config, tiny_models) -> Config:
    return dataclasses.replace(config, intake=dataclasses.replace(config.intake, min_side=32),
                               models=dataclasses.replace(config.models, default_family="sd15",
                                                          sd15=str(tiny_models.sd15)),
                               tagger=dataclasses.replace(config.tagger, model=str(tiny_models.tagger)))


async def test_a_second_start_button_and_a_reg_while_training_are_refused_privately(studio: Studio) -> None:
    await captioned_project(studio)
    long_run = {"project": "XingBar30", "epochs": 100, "repeats": 1, "settings": TINY}
    first = await ask(studio, ALICE, "lora train", long_run)
    second = await ask(studio, ALICE, "lora train", dict(long_run, epochs=99))
    started = await studio.fake.click(ALICE, first["id"], custom_ids(first)[0])
    await started.acked()
    await studio.fake.wait_for_message(lambda m: m["id"] == first["id"] and "Training #" in text_of(m))
    job = next(job for job in await studio.engine.jobs(ALICE_ACTOR) if job.kind == "train")

    refused = await studio.fake.click(ALICE, second["id"], custom_ids(second)[0])
    await refused.acked()
    answer = await refused.wait_followup(lambda m: "already has job" in text_of(m))
    assert answer["flags"] & 64 and f"XingBar30 already has job #{job.id} (Training" in text_of(answer)
    assert f"/lora cancel job:{job.id}" in text_of(answer)
    reg = await ask(studio, ALICE, "lora reg", {"project": "XingBar30", "count": 2})
    assert reg["flags"] & 64 and f"already has job #{job.id}" in text_of(reg)
    assert [j.kind for j in await studio.engine.jobs(ALICE_ACTOR)] == ["train"]

    await studio.engine.cancel(ALICE_ACTOR, job.id)
    # The refused plan kept its button: once the first training is gone, it starts.
    again = await studio.fake.click(ALICE, second["id"], custom_ids(second)[0])
    await again.acked()
    await studio.fake.wait_for_message(lambda m: m["id"] == second["id"] and "Training #" in text_of(m))
    retried = next(j for j in await studio.engine.jobs(ALICE_ACTOR) if j.kind == "train")
    assert retried.id != job.id
    await studio.engine.cancel(ALICE_ACTOR, retried.id)


def _train_jobs(data: Path) -> list[tuple[int, str, int]]:
    with sqlite3.connect(data / "lorabake.db") as db:
        return db.execute("SELECT id, state, attempts FROM jobs WHERE kind = 'train' ORDER BY id").fetchall()


def test_after_kill_9_the_command_line_goes_on_with_the_one_training(tmp_path: Path, tiny_models) -> None:
    (tmp_path / "config.toml").write_text(
        f'[intake]\nmin_side = 32\n[models]\nsd15 = "{tiny_models.sd15}"\n[tagger]\nmodel = "{tiny_models.tagger}"\n'
        "[samples]\nauto_after_training = false\n")
    ok_json(tmp_path, "projects", "new", "Bar", "XingBar", "man")
    for n in range(2):
        (tmp_path / f"{n}.png").write_bytes(picture(n))
    ok_json(tmp_path, "images", "add", "Bar", "0.png", "1.png")
    settings = [arg for pair in ("resolution=64", "bucket_min=64", "bucket_max=64", "batch_size=2", "repeats=1",
                                 "epochs=40", "network_dim=4", "network_alpha=2") for arg in ("--set", pair)]
    output = tmp_path / "data" / "users" / "0" / "Bar" / "output"
    first = subprocess.Popen([str(LORABAKE), "train", "Bar", *settings, "--json"], cwd=tmp_path, env=lorabake_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (output / "Bar-03.safetensors").is_file():
            assert first.poll() is None and time.monotonic() < deadline, "the training should be running"
            time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)   # the CLI and its worker, as a power cut would
        first.wait(10)

    [(job_id, state, _)] = _train_jobs(tmp_path / "data")
    assert state == "running"
    [shown] = ok_json(tmp_path, "queue")
    assert shown["id"] == job_id and shown["state"] == "interrupted"
    assert "interrupted (no lorabake process runs it" in lorabake(tmp_path, "queue").stdout

    again = lorabake(tmp_path, "train", "Bar", *settings, "--json", timeout=240)
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    notes = "\n".join(result["notes"])
    assert f"found #{job_id} Training [Bar]: queued" in notes and "lorabake restarted during attempt 1" in notes
    assert (f"job #{job_id} (Training of Bar) was already queued: running that one here instead of starting "
            "another") in notes
    # Epoch 3's file was there when it was killed; its state is written just after it, so the run goes on
    # after epoch 3, or after epoch 2 if the kill came in between.
    assert result["id"] == job_id and result["state"] == "done" and result["result"]["resumed_from_epoch"] >= 2
    assert _train_jobs(tmp_path / "data") == [(job_id, "done", 2)], "one training, resumed, not a second one"
