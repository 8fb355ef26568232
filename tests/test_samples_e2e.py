"""Samples after training, through the real bot, the fake Discord and real worker processes on tiny
models: Start training → when it finishes, a samples job is queued by itself and gets a status message in
the same channel → when that finishes, the recommendation, the score table, the heat map and the grids
(also the recommended epoch on an extra base model; models that cannot be used are skipped with a reason)
are posted under it → /lora download hands over the recommended epoch by default → /lora samples shows
the last run, or one epoch of it."""
from __future__ import annotations

import dataclasses
import json

import pytest

from engine.config import Config, SamplesConfig
from engine.devtools.pictures import picture
from engine.intake import IncomingFile
from tests.conftest import ALICE, ALICE_ACTOR, Studio
from tests.discord_helpers import custom_ids, ended, text_of
from tests.helpers import TINY, ask, new_project

WEIGHTS = [0.0, 0.5, 1.0]


@pytest.fixture
def config(config: Config, tiny_models) -> Config:
    extra = [str(tiny_models.sd15), str(tiny_models.sdxl), "/nowhere/model.safetensors"]
    return dataclasses.replace(
        config, intake=dataclasses.replace(config.intake, min_side=32),
        models=dataclasses.replace(config.models, default_family="sd15", sd15=str(tiny_models.sd15),
                                   sdxl=str(tiny_models.sdxl)),
        tagger=dataclasses.replace(config.tagger, model=str(tiny_models.tagger)),
        samples=SamplesConfig(weights=WEIGHTS, steps=2, size=64, extra_models=extra, auto_after_training=True))


async def test_training_is_followed_by_samples_and_download_defaults_to_the_recommendation(studio: Studio) -> None:
    await new_project(studio)
    await studio.engine.add_images(ALICE_ACTOR, "XingBar30", [IncomingFile(f"p{n}.png", picture(n)) for n in range(2)])
    for image in await studio.engine.images(ALICE_ACTOR, "XingBar30"):
        await studio.engine.curation.edit_caption(ALICE_ACTOR, "XingBar30", image.id, "solo, shirt")
    await studio.engine.curation.remove_tags(ALICE_ACTOR, "XingBar30", ["shirt"])  # a pruned "trait"
    early = text_of(await ask(studio, ALICE, "lora samples", {"project": "XingBar30"}))
    assert "no trained epochs to sample yet" in early and "/lora train" in early

    plan = await ask(studio, ALICE, "lora train", {"project": "XingBar30", "epochs": 2, "repeats": 1,
                                                   "settings": TINY})
    [start] = custom_ids(plan)
    await (await studio.fake.click(ALICE, plan["id"], start)).acked()
    trained = await studio.fake.wait_for_message(ended(plan["id"]), timeout=180)
    assert "finished" in text_of(trained), text_of(trained)

    # The samples job the engine queued by itself, shown in the training's channel, then its results under it.
    status = await studio.fake.wait_for_message(
        lambda m: "Sample grids #" in text_of(m) and m["channel_id"] == plan["channel_id"], timeout=30)
    done = await studio.fake.wait_for_message(ended(status["id"]), timeout=180)
    assert "finished" in text_of(done), text_of(done)
    posted = await studio.fake.wait_for_message(
        lambda m: "which epoch and weight?" in text_of(m)
        and str((m.get("message_reference") or {}).get("message_id")) == status["id"], timeout=30)

    folder = studio.engine.layout.project(ALICE, "XingBar30").samples
    report = json.loads((folder / "scores.json").read_text())
    best = report["recommended"]
    assert best["epoch"] in (1, 2) and best["weight"] in (0.5, 1.0)
    assert {(s["epoch"], s["weight"]) for s in report["scores"]} == {(e, w) for e in (1, 2) for w in WEIGHTS}
    assert all(s["leak"] == 0 for s in report["scores"] if s["weight"] == 0), "weight 0 is the base model"
    assert len(report["grids"]) == 5, "one grid per prompt: 3 with the trigger, 2 controls"
    assert sorted(report["epoch_grids"]) == ["1", "2"]
    assert [m["model"] for m in report["models"]] == [studio.config.samples.extra_models[0]]
    skipped = dict((m["model"], m["reason"]) for m in report["skipped_models"])
    assert "SDXL model" in skipped[studio.config.samples.extra_models[1]]
    assert "no such file" in skipped["/nowhere/model.safetensors"]
    expected = [report["heatmap"], *report["grids"], *report["models"][0]["grids"]]
    assert [a["filename"] for a in posted["attachments"]] == expected
    assert f"Use epoch {best['epoch']} at weight {best['weight']:g}" in text_of(posted)
    assert "⏭️ /nowhere/model.safetensors" in text_of(posted)
    assert {p.name for p in folder.iterdir()} == {"scores.json", *expected,
                                                  *(n for names in report["epoch_grids"].values() for n in names)}

    answer = await ask(studio, ALICE, "lora download", {"project": "XingBar30"})
    assert f"epoch {best['epoch']}, the recommended one (weight {best['weight']:g})" in text_of(answer)
    assert [a["filename"] for a in answer["attachments"]] == [f"XingBar30-{best['epoch']:02d}.safetensors"]
    final = await ask(studio, ALICE, "lora download", {"project": "XingBar30", "epoch": 2})
    assert [a["filename"] for a in final["attachments"]] == ["XingBar30-02.safetensors"]

    one = await ask(studio, ALICE, "lora samples", {"project": "XingBar30", "epoch": 1},
                    until=lambda text: "epoch 1" in text)
    assert [a["filename"] for a in one["attachments"]] == report["epoch_grids"]["1"]
    table = text_of(one).split("```")[1]
    assert "    1 " in table and "    2 " not in table, table
    missing = text_of(await ask(studio, ALICE, "lora samples", {"project": "XingBar30", "epoch": 7}))
    assert "no epoch 7" in missing and "1, 2" in missing
