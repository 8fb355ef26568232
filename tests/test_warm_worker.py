"""The warm GPU worker (engine.worker --serve) on tiny models: reg pictures → training → sample grids in one
long-lived process load the base model once, and make exactly what a process per job makes: the same reg
pictures, the same trained LoRA and the same sample grids, so no job sees the state another left."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
from safetensors.torch import load_file

from engine.config import Config, SamplesConfig
from engine.devtools.pictures import picture
from engine.facade import Engine
from engine.intake import IncomingFile
from tests.conftest import ALICE, ALICE_ACTOR
from tests.helpers import TINY, tiny_config


@pytest.fixture
def config(config: Config, tiny_models) -> Config:
    config = tiny_config(config, tiny_models)
    return dataclasses.replace(config, intake=dataclasses.replace(config.intake, min_side=32),
                               samples=SamplesConfig(weights=[0.0, 1.0], steps=2, size=64, auto_after_training=False))


async def _done(engine: Engine, events, job) -> dict:
    while not (event := await events.get()).final or event.job_id != job.id:
        pass
    assert event.type == "done", event.data
    return event.data["result"]


def _digests(folder: Path, pattern: str) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob(pattern))}


def _weights(folder: Path) -> dict[str, str]:
    """Each LoRA file's tensors (its metadata holds the training's times, which differ between runs)."""
    return {p.name: hashlib.sha256(b"".join(t.numpy().tobytes() for _, t in sorted(load_file(p).items())))
            .hexdigest() for p in sorted(folder.glob("*.safetensors"))}


async def _reg_train_samples(config: Config, warm: bool) -> dict:
    config = dataclasses.replace(config, data_dir=config.data_dir / ("warm" if warm else "cold"),
                                 queue=dataclasses.replace(config.queue, warm_worker=warm))
    engine = await Engine.open(config)
    await engine.start()
    try:
        events = engine.subscribe()
        await engine.create_project(ALICE_ACTOR, "XingBar30", "XingBar", "man")
        await engine.add_images(ALICE_ACTOR, "XingBar30", [IncomingFile(f"p{n}.png", picture(n)) for n in range(2)])
        for image in await engine.images(ALICE_ACTOR, "XingBar30"):
            await engine.curation.edit_caption(ALICE_ACTOR, "XingBar30", image.id, "solo, shirt")
        jobs = [await engine.reg.start(ALICE_ACTOR, "XingBar30", count=2)]
        await _done(engine, events, jobs[-1])
        jobs.append(await engine.training.start(ALICE_ACTOR, "XingBar30", dict(
            item.split("=") for item in f"{TINY}, epochs=1, repeats=1".split(", "))))
        trained = await _done(engine, events, jobs[-1])
        jobs.append(await engine.training.samples(ALICE_ACTOR, "XingBar30"))
        await _done(engine, events, jobs[-1])
        folders = engine.layout.project(ALICE, "XingBar30")
        logs = [engine.layout.job_log(job.id).read_text() for job in jobs]
        return {"reg": _digests(folders.root / "reg", "*.png"), "loss": trained["final_loss"],
                "lora": _weights(folders.output), "grids": _digests(folders.samples, "*.png"),
                "logs": logs}
    finally:
        await engine.close()


async def test_reg_training_and_samples_in_one_warm_worker_match_a_process_per_job(config: Config) -> None:
    warm = await _reg_train_samples(config, warm=True)
    cold = await _reg_train_samples(config, warm=False)
    # The base model is loaded by the reg job and handed on to the training and the samples.
    assert ["base model loaded" in log for log in warm["logs"]] == [True, False, False]
    assert ["kept from an earlier job" in log for log in warm["logs"]] == [False, True, True]
    assert all("base model loaded" in log for log in cold["logs"])
    for what in ("reg", "loss", "lora", "grids"):
        assert warm[what] == cold[what], what
    assert warm["grids"] and warm["lora"]
