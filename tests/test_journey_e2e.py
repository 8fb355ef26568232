"""The whole journey of DESIGN §1 through the real bot, the fake Discord and real worker processes on
tiny models, one command after another as a member would: /lora new → /lora upload → /lora tag →
/lora curate (prune a suggested trait, Apply) → /lora reg → /lora train + Start → the samples that follow
by themselves → /lora download. Each step's details have their own tests; this one checks that the
steps fit together (what one writes is what the next one reads)."""
from __future__ import annotations

import dataclasses
import json

import pytest
from safetensors import safe_open

from engine.config import Config, SamplesConfig
from engine.devtools.pictures import picture
from tests.conftest import ALICE, Studio
from tests.discord_helpers import custom_ids, ended, text_of
from tests.helpers import TINY, ask, caption_files, click, new_project


@pytest.fixture
def config(config: Config, tiny_models) -> Config:
    return dataclasses.replace(
        config, intake=dataclasses.replace(config.intake, min_side=32),
        models=dataclasses.replace(config.models, default_family="sd15", sd15=str(tiny_models.sd15)),
        tagger=dataclasses.replace(config.tagger, model=str(tiny_models.tagger), general_threshold=0.3),
        reg=dataclasses.replace(config.reg, steps=2, resolution=64, batch_size=2),
        samples=SamplesConfig(weights=[0.0, 1.0], steps=2, size=64, auto_after_training=True))


async def run_job(studio: Studio, command: str, options: dict, title: str) -> dict:
    """A command that answers with a job's status message; returns that message once the job has ended."""
    status = await ask(studio, ALICE, command, options, until=lambda text: title in text)
    done = await studio.fake.wait_for_message(ended(status["id"]), timeout=180)
    assert "finished" in text_of(done), text_of(done)
    return done


async def test_from_a_new_project_to_the_downloaded_lora(studio: Studio) -> None:
    await new_project(studio)
    uploaded = await ask(studio, ALICE, "lora upload", {"project": "XingBar30"}, until=lambda t: "added" in t,
                         attachments={f"file{n + 1}": (f"p{n}.png", picture(300 + n)) for n in range(4)})
    assert "XingBar30: 4 added, 0 refused" in text_of(uploaded)

    await run_job(studio, "lora tag", {"project": "XingBar30"}, "Tagging")
    captions = caption_files(studio)
    assert len(captions) == 4 and all(text.startswith("XingBar, ") for text in captions.values())

    screen = await ask(studio, ALICE, "lora curate", {"project": "XingBar30"})
    starred = [item for row in screen["components"] for item in row["components"]
               if item.get("label", "").startswith("⭐ ")]
    assert starred, "the tiny tagger writes hair/eye tags, which are suggested as traits"
    trait = starred[0]["label"].removeprefix("⭐ ").rsplit(" ", 2)[0]
    screen = await click(studio, ALICE, screen, starred[0]["custom_id"])
    await click(studio, ALICE, screen, next(c for c in custom_ids(screen) if c.endswith(":apply")))
    assert all(trait not in text.split(", ") for text in caption_files(studio).values()), trait

    reg = await run_job(studio, "lora reg", {"project": "XingBar30", "count": 2}, "Reg images")
    assert "**added**: 2" in text_of(reg)

    plan = await ask(studio, ALICE, "lora train", {"project": "XingBar30", "epochs": 2, "repeats": 1,
                                                   "settings": TINY})
    assert "4 (+2 reg)" in text_of(plan)
    assert "Training picture: `XingBar, " in text_of(plan)
    assert "Reg picture: `" in text_of(plan) and "Reg picture: `XingBar" not in text_of(plan)
    [start] = custom_ids(plan)
    await (await studio.fake.click(ALICE, plan["id"], start)).acked()
    trained = await studio.fake.wait_for_message(ended(plan["id"]), timeout=180)
    assert "finished" in text_of(trained), text_of(trained)
    sampling = await studio.fake.wait_for_message(lambda m: "Sample grids #" in text_of(m), timeout=30)
    done = await studio.fake.wait_for_message(ended(sampling["id"]), timeout=180)
    assert "finished" in text_of(done), text_of(done)
    advice = await studio.fake.wait_for_message(lambda m: "which epoch and weight?" in text_of(m), timeout=30)
    epoch = int(text_of(advice).split("Use epoch ")[1].split()[0])

    answer = await ask(studio, ALICE, "lora download", {"project": "XingBar30"})
    name = f"XingBar30-{epoch:02d}.safetensors"
    assert [a["filename"] for a in answer["attachments"]] == [name]
    output = studio.engine.layout.project(ALICE, "XingBar30").output
    assert studio.fake.files[(answer["id"], name)] == (output / name).read_bytes()
    with safe_open(output / name, "np") as lora:
        metadata = lora.metadata()
        assert metadata["ss_num_reg_images"] == "2" and metadata["ss_num_train_images"] == "4"
        folders = json.loads(metadata["ss_tag_frequency"])
        [train_folder] = [name for name in folders if name.endswith("_XingBar30")]
        assert set(folders) == {train_folder, "1_man"}, "the reg folder is counted, as sd-scripts does"
        assert folders["1_man"] and "XingBar" not in folders["1_man"], "reg captions carry no trigger"
        frequency = folders[train_folder]
        assert trait not in frequency and "XingBar" in frequency, "the pruned trait is left to the trigger"
