"""Tag curation through the real bot and the fake Discord: prune by buttons (across a restart),
undo, replace, trigger, the per-picture browser, export; a stranger's clicks are refused."""
from __future__ import annotations

import dataclasses
import io
import zipfile
from pathlib import Path

import pytest

from engine.config import Config
from engine.devtools.pictures import picture
from engine.devtools.tiny_models import write_tiny_tagger
from engine.intake import IncomingFile
from tests.conftest import ALICE, ALICE_ACTOR, BOB, BOB_ACTOR, Studio
from tests.discord_helpers import custom_ids, text_of
from tests.helpers import ask, caption_files, click, new_project

SEED_TRAITS = ["brown eyes", "long hair", "male focus", "mature male", "muscular", "blonde hair", "pectorals",
               "muscular male", "manly", "large pectorals"]
OTHER_TAGS = ["shirt", "smile", "white background", "upper body", "looking at viewer"]


@pytest.fixture
def config(config: Config, tmp_path: Path) -> Config:
    tagger = write_tiny_tagger(tmp_path / "tagger")
    return dataclasses.replace(config, intake=dataclasses.replace(config.intake, min_side=32),
                               tagger=dataclasses.replace(config.tagger, model=str(tagger)),
                               models=dataclasses.replace(config.models, default_family="sd15",
                                                          sd15=str(tmp_path / "no-model")))


async def seeded_project(studio: Studio, pictures: int = 6) -> list[int]:
    """A project whose captions look like the seed's example (traits in most pictures)."""
    await new_project(studio)
    engine = studio.engine
    await engine.add_images(ALICE_ACTOR, "XingBar30",
                            [IncomingFile(f"p{n}.png", picture(200 + n)) for n in range(pictures)])
    images = await engine.images(ALICE_ACTOR, "XingBar30", "train")
    for n, image in enumerate(images):
        tags = ["XingBar"] + SEED_TRAITS + OTHER_TAGS[: 1 + n % len(OTHER_TAGS)]
        await engine.curation.edit_caption(ALICE_ACTOR, "XingBar30", image.id, ", ".join(tags))
    return [image.id for image in images]


def button_for(message: dict, tag: str) -> str:
    """The custom_id of the tag's button on the curate screen (labels start with the tag)."""
    for row in message["components"]:
        for item in row["components"]:
            label = item.get("label", "").removeprefix("⭐ ").removeprefix("✂ ")
            if label.startswith(f"{tag} "):
                return item["custom_id"]
    raise LookupError(f"no button for {tag!r}")


async def test_prune_by_buttons_across_a_restart_then_undo(studio: Studio) -> None:
    await seeded_project(studio)
    screen = await ask(studio, ALICE, "lora curate", {"project": "XingBar30"})
    labels = [item["label"] for row in screen["components"] for item in row["components"]]
    assert any(label.startswith("⭐ long hair 6 (100%)") for label in labels), labels
    assert not any(label.startswith("⭐ shirt") for label in labels), "clothes are not the character"

    screen = await click(studio, ALICE, screen, button_for(screen, "long hair"))
    screen = await click(studio, ALICE, screen, button_for(screen, "brown eyes"))
    assert "Marked for removal: `long hair`, `brown eyes`" in text_of(screen)

    stranger = await studio.fake.forged_click(BOB, screen["id"], button_for(screen, "muscular"))
    await stranger.acked()
    refusal = await stranger.wait_original() if stranger.response_type == 4 else stranger.response_data
    assert "not yours" in text_of(refusal)

    await studio.restart()  # the marks live in the database, the buttons in custom_ids
    screen = await click(studio, ALICE, screen, button_for(screen, "manly"))
    assert "`long hair`, `brown eyes`, `manly`" in text_of(screen)
    apply_button = next(c for c in custom_ids(screen) if c.endswith(":apply"))
    screen = await click(studio, ALICE, screen, apply_button)
    for text in caption_files(studio).values():
        assert text.startswith("XingBar, ") and "long hair" not in text and "manly" not in text

    screen = await click(studio, ALICE, screen, button_for(screen, "blonde hair"))
    screen = await click(studio, ALICE, screen, next(c for c in custom_ids(screen) if c.endswith(":apply")))
    assert all("blonde hair" not in text for text in caption_files(studio).values())
    screen = await click(studio, ALICE, screen, next(c for c in custom_ids(screen) if c.endswith(":undo")))
    files = caption_files(studio)
    assert all("blonde hair" in text and "long hair" not in text for text in files.values()), \
        "undo brings back only the last change"
    captions = await studio.engine.captions(ALICE_ACTOR, "XingBar30")
    assert sorted(captions.values()) == sorted(files.values()), "files and database agree"


async def test_replace_and_trigger_commands(studio: Studio) -> None:
    await seeded_project(studio)
    replaced = text_of(await ask(studio, ALICE, "lora replace", {
        "project": "XingBar30", "search": "muscular, pectorals", "replace": "strong", "mode": "and"}))
    assert replaced.startswith("✅")
    files = caption_files(studio)
    assert all("strong" in text and ", muscular," not in text for text in files.values())

    changed = text_of(await ask(studio, ALICE, "lora trigger", {"project": "XingBar30", "trigger": "smile"}))
    assert "✅" in changed and "⚠️" in changed, "a trigger the tagger already writes gets a warning"
    # No base model's tokenizer here: the member is told that check did not run, not that all is well.
    assert "ℹ️ Not checked: the base model's tokenizer was not available" in changed
    assert all(text.startswith("smile, ") and "XingBar" not in text for text in caption_files(studio).values())
    refused = text_of(await ask(studio, ALICE, "lora trigger", {"project": "XingBar30", "trigger": "Xing, Bar"}))
    assert "comma" in refused
    for hidden, said in (("Xing\u200bBar", "invisible character (U+200B ZERO WIDTH SPACE)"),
                         ("Xing\u202eBar", "U+202E RIGHT-TO-LEFT OVERRIDE"),
                         ("(XingBar:1.5)", "( ) :, which prompts read")):
        refused = text_of(await ask(studio, ALICE, "lora trigger", {"project": "XingBar30", "trigger": hidden}))
        assert said in refused, refused
    assert all(text.startswith("smile, ") for text in caption_files(studio).values()), "nothing changed"


async def test_browse_edit_and_remove_a_picture(studio: Studio) -> None:
    ids = await seeded_project(studio, pictures=3)
    shown = await ask(studio, ALICE, "lora browse", {"project": "XingBar30"})
    assert "picture 1 of 3" in text_of(shown) and shown["attachments"][0]["filename"] == "preview.jpg"
    nxt = next(c for c in custom_ids(shown) if c.endswith(":next"))
    shown = await click(studio, ALICE, shown, nxt)
    await studio.fake.wait_for_message(lambda m: m["id"] == shown["id"] and "picture 2 of 3" in text_of(m))

    edit = next(c for c in custom_ids(studio.fake.messages[shown["id"]]) if c.endswith(":edit"))
    opened = await (await studio.fake.click(ALICE, shown["id"], edit)).acked()
    assert opened.response_type == 9
    submitted = await studio.fake.submit_modal(ALICE, opened.response_data["custom_id"],
                                               {"tags": "solo, red scarf"})
    await submitted.acked()
    await studio.fake.wait_for_message(lambda m: m["id"] == shown["id"] and "red scarf" in text_of(m))
    captions = await studio.engine.captions(ALICE_ACTOR, "XingBar30")
    assert captions[ids[1]].startswith("XingBar, ") and "red scarf" in captions[ids[1]], "trigger kept first"

    remove = next(c for c in custom_ids(studio.fake.messages[shown["id"]]) if c.endswith(":remove"))
    await click(studio, ALICE, studio.fake.messages[shown["id"]], remove)
    await studio.fake.wait_for_message(lambda m: m["id"] == shown["id"] and "of 2" in text_of(m))
    assert len(await studio.engine.images(ALICE_ACTOR, "XingBar30")) == 2


async def test_export_sends_a_kohya_zip(studio: Studio) -> None:
    await seeded_project(studio, pictures=2)
    answer = await ask(studio, ALICE, "lora export", {"project": "XingBar30", "repeats": 5})
    [attachment] = answer["attachments"]
    data = studio.fake.files[(answer["id"], attachment["filename"])]
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert sum(name.startswith("img/5_XingBar man/") and name.endswith(".png") for name in names) == 2
    assert sum(name.startswith("img/5_XingBar man/") and name.endswith(".txt") for name in names) == 2


async def test_two_members_curating_at_once_keep_their_own_marks(studio: Studio) -> None:
    await seeded_project(studio)
    await new_project(studio, BOB, "BobsDog")
    await studio.engine.add_images(BOB_ACTOR, "BobsDog", [IncomingFile("d.png", picture(300))])
    [dog] = await studio.engine.images(BOB_ACTOR, "BobsDog")
    await studio.engine.curation.edit_caption(BOB_ACTOR, "BobsDog", dog.id, "long hair, dog")

    alice = await ask(studio, ALICE, "lora curate", {"project": "XingBar30"})
    bob = await ask(studio, BOB, "lora curate", {"project": "BobsDog"})
    alice = await click(studio, ALICE, alice, button_for(alice, "long hair"))
    bob = await click(studio, BOB, bob, button_for(bob, "dog"))
    assert "Marked for removal: `long hair`" in text_of(alice) and "`dog`" not in text_of(alice)
    assert "Marked for removal: `dog`" in text_of(bob) and "`long hair`" not in text_of(bob)
    await click(studio, BOB, bob, next(c for c in custom_ids(bob) if c.endswith(":apply")))
    assert (await studio.engine.captions(BOB_ACTOR, "BobsDog"))[dog.id] == "XingBar, long hair"
    assert all("long hair" in text for text in caption_files(studio).values()), "Alice's captions untouched"
