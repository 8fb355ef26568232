"""/lora reg through the real bot, the fake Discord and real worker processes on tiny models: a queued
job with a live status message and a Cancel button; cancelled halfway, asked again, it renders only
the missing pictures; done, the pictures are tagged "reg" pictures that /lora tags lists. Then the
same from the command line."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.config import Config
from engine.reg.spec import MANIFEST_NAME, PENDING_DIR, Manifest
from tests.conftest import ALICE, ALICE_ACTOR, Studio
from tests.discord_helpers import custom_ids, ended, text_of
from tests.helpers import ask, new_project, ok_json, tiny_config


@pytest.fixture
def config(config: Config, tiny_models) -> Config:
    return tiny_config(config, tiny_models)


async def test_reg_cancelled_halfway_then_asked_again_renders_the_rest_and_registers_tagged_pictures(
        studio: Studio) -> None:
    await new_project(studio)
    status = await ask(studio, ALICE, "lora reg", {"project": "XingBar30", "count": 8},
                       until=lambda text: "Reg images" in text)
    [cancel] = custom_ids(status)
    # Pictures of one batch report together and edits are coalesced, so any early count will do.
    await studio.fake.wait_for_message(
        lambda m: m["id"] == status["id"] and re.search(r"rendered [1-5] of 8", text_of(m)), timeout=120)
    click = await studio.fake.click(ALICE, status["id"], cancel)
    await click.acked()
    stopped = await studio.fake.wait_for_message(ended(status["id"]), timeout=30)
    assert "cancelled" in text_of(stopped), text_of(stopped)
    root = studio.engine.layout.project(ALICE, "XingBar30").root
    pending = root / PENDING_DIR
    # Done = a file with its manifest entry (a kill between the two leaves a file that is redone).
    kept = sum((pending / name).is_file() for name in Manifest.load(root / "reg" / MANIFEST_NAME).files)
    assert 1 <= kept <= 7, "cancelled while rendering"
    assert await studio.engine.images(ALICE_ACTOR, "XingBar30", "reg") == [], "a cancelled job registers nothing"

    again = await ask(studio, ALICE, "lora reg", {"project": "XingBar30", "count": 8},
                      until=lambda text: "Reg images" in text)
    done = await studio.fake.wait_for_message(ended(again["id"]), timeout=180)
    text = text_of(done)
    assert "finished" in text, text
    assert f"**rendered**: {8 - kept}" in text and f"**already there**: {kept}" in text and "**added**: 8" in text
    assert any("running" in text_of(version) for version in studio.fake.message_history[again["id"]])

    rows = await studio.engine.images(ALICE_ACTOR, "XingBar30", "reg")
    captions = await studio.engine.captions(ALICE_ACTOR, "XingBar30", "reg")
    assert len(rows) == 8 and set(captions) == {row.id for row in rows}
    reg_dir = studio.engine.layout.project(ALICE, "XingBar30").reg
    for n, row in enumerate(rows):
        assert (row.width, row.height) == (64, 64) and row.source == f"rendered by the base model, seed {10 + n}"
        assert (reg_dir / row.filename).with_suffix(".txt").read_text() == captions[row.id]
        assert "XingBar" not in captions[row.id], "reg captions teach the class, not the character"
    assert not list(pending.iterdir()), "registered pictures leave reg-pending/"
    assert (await studio.engine.get_project(ALICE_ACTOR, "XingBar30")).reg_images == 8
    top = (await studio.engine.tag_stats(ALICE_ACTOR, "XingBar30", "reg"))[0]
    listed = text_of(await ask(studio, ALICE, "lora tags", {"project": "XingBar30", "set": "regularization"}))
    assert top.tag in listed

    print(f"cancelled after {kept} of 8 pictures")  # how much margin the cancel had, for a flaky run
    refused = text_of(await ask(studio, ALICE, "lora reg", {"project": "XingBar30", "count": 5000}))
    assert "from 1 to 1000" in refused


def test_reg_from_the_command_line(tmp_path: Path, tiny_models) -> None:
    (tmp_path / "config.toml").write_text(
        f'[models]\nsd15 = "{tiny_models.sd15}"\n[tagger]\nmodel = "{tiny_models.tagger}"\n'
        "[reg]\ncount = 2\nsteps = 2\nresolution = 64\nbatch_size = 2\n")
    ok_json(tmp_path, "projects", "new", "XingBar30", "XingBar", "man")
    job = ok_json(tmp_path, "reg", "XingBar30", "--prompt", "man, outdoors")
    assert job["state"] == "done", job
    assert job["result"]["prompt"] == "masterpiece, best quality, man, outdoors"
    assert (job["result"]["rendered"], job["result"]["added"]) == (2, 2)
