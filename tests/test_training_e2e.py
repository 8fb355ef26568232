"""Training through the real bot, the fake Discord and a real worker process on tiny models:
/lora train shows the plan, Start queues the job, the status message shows progress and ends with
the LoRA files on disk; a bad option gets a reason; a stranger cannot press Start."""
from __future__ import annotations

import dataclasses

import pytest
from safetensors import safe_open

from engine.config import Config
from engine.devtools.pictures import picture
from engine.intake import IncomingFile
from tests.conftest import ALICE, ALICE_ACTOR, BOB, Studio
from tests.discord_helpers import custom_ids, ended, text_of
from tests.helpers import TINY, ask, captioned_project, new_project


@pytest.fixture
def config(config: Config, tiny_models) -> Config:
    return dataclasses.replace(config, intake=dataclasses.replace(config.intake, min_side=32),
                               models=dataclasses.replace(config.models, default_family="sd15",
                                                          sd15=str(tiny_models.sd15), sdxl=str(tiny_models.sdxl)),
                               tagger=dataclasses.replace(config.tagger, model=str(tiny_models.tagger)))


async def test_plan_start_progress_and_files(studio: Studio) -> None:
    await captioned_project(studio)
    plan = await ask(studio, ALICE, "lora train", {"project": "XingBar30", "epochs": 2, "repeats": 1,
                                                   "settings": TINY})
    text = text_of(plan)
    assert "Training plan for XingBar30 (SD15)" in text and "1 × 2" in text and "1/epoch, 2 in all" in text
    assert "(a guess until a training has run on this server)" in text
    [start] = custom_ids(plan)

    stranger = await studio.fake.click(BOB, plan["id"], start)
    await stranger.acked()
    assert "someone else's training plan" in text_of(stranger.response_data)

    clicked = await studio.fake.click(ALICE, plan["id"], start)
    await clicked.acked()
    done = await studio.fake.wait_for_message(ended(plan["id"]), timeout=180)
    assert "finished" in text_of(done), text_of(done)
    assert "XingBar30.safetensors" in text_of(done)
    output = studio.engine.layout.project(ALICE, "XingBar30").output
    assert {p.name for p in output.glob("*.safetensors")} >= {"XingBar30.safetensors", "XingBar30-01.safetensors",
                                                               "XingBar30-02.safetensors"}
    with safe_open(output / "XingBar30.safetensors", "np") as lora:
        assert lora.metadata()["ss_network_dim"] == "4" and float(lora.metadata()["ss_network_alpha"]) == 2
    kinds = {artifact.kind for artifact in await studio.engine.artifacts(ALICE_ACTOR, "XingBar30")}
    assert kinds == {"lora", "lora-epoch"}
    history = studio.fake.message_history[plan["id"]]
    assert any("running" in text_of(version) for version in history), "progress was shown while it ran"
    again = text_of(await ask(studio, ALICE, "lora train", {"project": "XingBar30", "epochs": 2, "repeats": 1,
                                                           "settings": TINY + ", batch_size=1"}))
    measured = float(again.split("At about ")[1].split(" s per step")[0])
    [result] = [job.result for job in await studio.engine.jobs(ALICE_ACTOR, include_finished=True)
                if job.kind == "train"]
    assert "(measured on this server's last SD 1.x training)" in again
    assert measured == pytest.approx(0.5 / result["it_s"], rel=0.06), "half the pixels per step: half the time"


async def test_bad_options_and_empty_projects_get_reasons(studio: Studio) -> None:
    await new_project(studio)
    empty = text_of(await ask(studio, ALICE, "lora train", {"project": "XingBar30"}))
    assert "no training pictures yet" in empty
    await captioned_project_images_only(studio)
    typo = text_of(await ask(studio, ALICE, "lora train", {"project": "XingBar30", "settings": "unet_lrr=1e-4"}))
    assert "did you mean unet_lr" in typo
    wild = text_of(await ask(studio, ALICE, "lora train", {"project": "XingBar30", "unet_lr": "5"}))
    assert "unet_lr must be between" in wild
    malformed = text_of(await ask(studio, ALICE, "lora train", {"project": "XingBar30", "settings": "flip"}))
    assert "is not key=value" in malformed


async def captioned_project_images_only(studio: Studio) -> None:
    await studio.engine.add_images(ALICE_ACTOR, "XingBar30", [IncomingFile("q.png", picture(50))])


async def test_download_attaches_or_links(studio: Studio) -> None:
    import aiohttp

    await captioned_project(studio)
    missing = text_of(await ask(studio, ALICE, "lora download", {"project": "XingBar30"}))
    assert "no trained LoRA yet" in missing
    await train_here(studio, "epochs=2, repeats=1")
    output = studio.engine.layout.project(ALICE, "XingBar30").output

    answer = await ask(studio, ALICE, "lora download", {"project": "XingBar30"})
    [attachment] = answer["attachments"]
    assert attachment["filename"] == "XingBar30.safetensors"
    assert studio.fake.files[(answer["id"], "XingBar30.safetensors")] == (output / "XingBar30.safetensors").read_bytes()
    epoch = await ask(studio, ALICE, "lora download", {"project": "XingBar30", "epoch": 1})
    assert epoch["attachments"][0]["filename"] == "XingBar30-01.safetensors"
    gone = text_of(await ask(studio, ALICE, "lora download", {"project": "XingBar30", "epoch": 7}))
    assert "kept epochs are 1, 2" in gone

    studio.fake.upload_limit = 1000  # a server whose limit the file exceeds: a signed link instead
    linked = text_of(await ask(studio, ALICE, "lora download", {"project": "XingBar30"}))
    url = linked.split("here (the link works for 24 hours): ")[1].split()[0]
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            assert response.status == 200
            assert await response.read() == (output / "XingBar30.safetensors").read_bytes()
        async with session.get(url[:-3] + "abc") as response:
            assert response.status == 403

    # A new training moves this run's files aside: the link handed out still gives the same file, and
    # downloads now offer the new run's epochs only.
    first_run = (output / "XingBar30.safetensors").read_bytes()
    await train_here(studio, "epochs=1, repeats=1, network_dim=2")
    [previous] = (output / "previous").iterdir()
    assert {p.name for p in previous.iterdir()} == {"XingBar30.safetensors", "XingBar30-01.safetensors",
                                                     "XingBar30-02.safetensors"}
    assert (output / "XingBar30.safetensors").read_bytes() != first_run
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200 and await response.read() == first_run
    gone = text_of(await ask(studio, ALICE, "lora download", {"project": "XingBar30", "epoch": 2}))
    assert "kept epochs are 1" in gone and "1, 2" not in gone


async def train_here(studio: Studio, settings: str) -> None:
    job = await studio.engine.training.start(ALICE_ACTOR, "XingBar30", dict(
        item.split("=") for item in f"{TINY}, {settings}".split(", ")))
    events = studio.engine.subscribe()
    while not (event := await events.get()).final or event.job_id != job.id:
        pass
    assert event.type == "done", event.data

