"""Pictures in, tags out, through the real bot and the fake Discord: /lora upload (attachments, zips,
the modal), Apps → Add to LoRA project, /lora tag with its status message, /lora tags pages."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from engine.config import Config
from engine.devtools.pictures import picture, zip_of
from engine.devtools.tiny_models import write_tiny_tagger
from tests.conftest import ALICE, ALICE_ACTOR, BOB, Studio
from tests.discord_helpers import custom_ids, text_of
from tests.helpers import ask, new_project


@pytest.fixture
def config(config: Config, tmp_path: Path) -> Config:
    tagger = write_tiny_tagger(tmp_path / "tagger")
    return dataclasses.replace(
        config,
        intake=dataclasses.replace(config.intake, min_side=32, max_side=256, max_images_per_project=50),
        tagger=dataclasses.replace(config.tagger, model=str(tagger), general_threshold=0.2, batch_size=4),
    )


def dataset_files(studio: Studio, project: str = "XingBar30") -> list[str]:
    return sorted(path.name for path in studio.engine.layout.project(ALICE, project).dataset.iterdir())


async def test_upload_attachments_and_zip_reports_every_refusal(studio: Studio) -> None:
    await new_project(studio)
    bundle = zip_of({"set/a.png": picture(10), "set/b.jpg": picture(11, fmt="JPEG"), "../evil.png": picture(12)})
    report = text_of(await ask(studio, ALICE, "lora upload", {"project": "XingBar30"}, attachments={
        "file1": ("one.png", picture(1)),
        "file2": ("notes.png", b"these are my notes, not a picture"),
        "file3": ("tiny.png", picture(3, size=(16, 16))),
        "file4": ("copy.png", picture(1)),
        "file5": ("bundle.zip", bundle),
    }, until=lambda text: "added" in text))
    assert "XingBar30: 3 added, 4 refused" in report
    for name in ("notes.png", "tiny.png", "copy.png", "evil.png"):
        assert name in report
    files = [name for name in dataset_files(studio) if name.endswith(".png")]
    assert len(files) == 3
    assert not any(path.name == "evil.png" for path in studio.engine.layout.root.rglob("evil.png"))


async def test_upload_without_files_opens_the_file_form(studio: Studio) -> None:
    await new_project(studio)
    interaction = await (await studio.fake.slash(ALICE, "lora upload", {"project": "XingBar30"})).acked()
    assert interaction.response_type == 9, "an upload with no files opens the modal file picker"
    form = interaction.response_data
    submitted = await studio.fake.submit_modal(ALICE, form["custom_id"], {"files": [("a.png", picture(21)),
                                                                                   ("b.png", picture(22))]})
    report = await submitted.wait_original(lambda m: "added" in text_of(m))
    assert "2 added, 0 refused" in text_of(report)


async def test_add_to_project_from_a_message(studio: Studio) -> None:
    await new_project(studio)
    await new_project(studio, name="Second")
    post = studio.fake.post_user_message(BOB, "look at him", files=[("x.png", picture(31)), ("y.png", picture(32))])
    apps = await studio.fake.message_command(ALICE, "Add to LoRA project", post["id"])
    picker = await apps.wait_original(lambda m: "Which project" in text_of(m))
    [select] = custom_ids(picker)
    stranger = await studio.fake.forged_click(BOB, picker["id"], select)
    await stranger.acked()
    assert "picked by someone else" in text_of(stranger.response_data)
    chosen = await studio.fake.click(ALICE, picker["id"], select, values=["XingBar30"])
    await chosen.acked()
    done = await studio.fake.wait_for_message(lambda m: m["id"] == picker["id"] and "2 added" in text_of(m))
    assert custom_ids(done) == []
    assert len([n for n in dataset_files(studio) if n.endswith(".png")]) == 2


async def test_tag_then_browse_tags(studio: Studio) -> None:
    await new_project(studio)
    await ask(studio, ALICE, "lora upload", {"project": "XingBar30"}, until=lambda text: "added" in text,
              attachments={f"file{i}": (f"p{i}.png", picture(100 + i)) for i in range(1, 7)})
    early = text_of(await ask(studio, BOB, "lora tag", {"project": "XingBar30"}))
    assert "no project called 'XingBar30'" in early

    interaction = await studio.fake.slash(ALICE, "lora tag", {"project": "XingBar30"})
    status = await interaction.wait_original(lambda m: "Tagging" in text_of(m))
    done = await studio.fake.wait_for_message(
        lambda m: m["id"] == status["id"] and "finished" in text_of(m), timeout=60)
    assert "CPUExecutionProvider" in text_of(done) and "top tags" in text_of(done)

    folder = studio.engine.layout.project(ALICE, "XingBar30").dataset
    images = await studio.engine.images(ALICE_ACTOR, "XingBar30", "train")
    captions = {row.filename: (folder / row.filename).with_suffix(".txt").read_text() for row in images}
    assert all(text.startswith("XingBar, ") or text == "XingBar" for text in captions.values())

    stats = await studio.engine.tag_stats(ALICE_ACTOR, "XingBar30")
    page = await ask(studio, ALICE, "lora tags", {"project": "XingBar30"})
    top = stats[0]
    assert f"`{top.tag}` — {top.count} ({top.share:.0%})" in text_of(page)
    if len(stats) > 20:
        next_button = next(c for c in custom_ids(page) if c.endswith(":next"))
        clicked = await studio.fake.click(ALICE, page["id"], next_button)
        await clicked.acked()
        assert "page 2 of" in text_of(clicked.original or studio.fake.messages[page["id"]])
