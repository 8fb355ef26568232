"""Caption curation: every op on a real SQLite database and real caption files, its undo and redo,
the trigger-word rules, OR/AND search, history across restarts, and the repair of caption files."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.curation import (
    Curation,
    EditCaption,
    Op,
    RemoveDuplicates,
    RemoveTags,
    ReplaceTags,
    SetTrigger,
    SortTags,
    join_tags,
    op_from_dict,
    split_tags,
    validate_trigger,
)
from engine.curation import service as curation_service
from engine.errors import Invalid, SetupError
from storage import images as image_rows
from storage import projects as project_rows
from storage.db import Database
from storage.layout import DataLayout, atomic_write_text
from storage.projects import ProjectRow
from storage.users import upsert_user

USER = 1001
TRAIN_CAPTIONS = {
    "a.png": "xg, smile, blue hair, long hair",
    "b.png": "xg, blue hair, red eyes, smile, smile",
    "c.png": "xg, red eyes, long hair",
    "d.png": None,  # not tagged yet
}
# The tag job currently puts the trigger into reg captions too (r2): trigger ops must leave them alone.
REG_CAPTIONS = {"r1.png": "1boy, blue hair", "r2.png": "xg, man, smile"}
INITIAL = {"trigger": "xg", **TRAIN_CAPTIONS, **REG_CAPTIONS}


@dataclass
class World:
    layout: DataLayout
    db: Database
    curation: Curation
    project: ProjectRow
    ids: dict[str, int]  # file name → image id

    async def reopen(self) -> None:
        await self.db.close()
        self.db = await Database.open(self.layout.db_path)
        self.curation = Curation(self.db, self.layout)

    def caption_file(self, name: str) -> Path:
        dirs = self.layout.project(self.project.user_id, self.project.dir_name)
        folder = dirs.dataset if name in TRAIN_CAPTIONS else dirs.reg
        return (folder / name).with_suffix(".txt")

    async def state(self) -> dict[str, str | None]:
        """The trigger and every picture's caption, after checking each caption file agrees."""
        row = await project_rows.get_by_id(self.db, self.project.id)
        captions = await image_rows.captions(self.db, self.project.id)
        result: dict[str, str | None] = {"trigger": row.trigger}
        for name, image_id in self.ids.items():
            text = captions.get(image_id)
            path = self.caption_file(name)
            on_disk = path.read_text(encoding="utf-8") if path.exists() else None
            assert on_disk == text, f"{path.name} says {on_disk!r}, the database {text!r}"
            result[name] = text
        return result


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    layout = DataLayout(tmp_path / "data")
    layout.ensure()
    db = await Database.open(layout.db_path)
    ids: dict[str, int] = {}
    async with db.transaction() as tx:
        await upsert_user(tx, USER, "alice")
        project = await project_rows.insert_project(tx, USER, "Xing", "Xing", "xg", "man")
        for kind, captions in (("train", TRAIN_CAPTIONS), ("reg", REG_CAPTIONS)):
            for name, text in captions.items():
                ids[name] = await image_rows.insert(tx, project_id=project.id, kind=kind, filename=name,
                                                    sha256=name, phash=None, width=512, height=512, source=name)
                if text is not None:
                    await image_rows.set_caption(tx, ids[name], text)
    made = World(layout, db, Curation(db, layout), project, ids)
    layout.create_project_dirs(USER, "Xing")
    for name, text in {**TRAIN_CAPTIONS, **REG_CAPTIONS}.items():
        if text is not None:
            atomic_write_text(made.caption_file(name), text)
    assert await made.state() == INITIAL
    yield made
    await made.db.close()


# --- every op: result, undo, redo, files ----------------------------------------------------------

OpMaker = Callable[[dict[str, int]], Op]

CASES: list[tuple[str, OpMaker, str, dict[str, str | None], str]] = [
    ("set trigger", lambda ids: SetTrigger("XingBar"), "train", {
        "trigger": "XingBar", "a.png": "XingBar, smile, blue hair, long hair",
        "b.png": "XingBar, blue hair, red eyes, smile, smile", "c.png": "XingBar, red eyes, long hair",
        "d.png": "XingBar"}, "the trigger word is now XingBar (was xg), put first in 4 captions"),
    ("remove tags", lambda ids: RemoveTags(["blue hair", "Red_Eyes"]), "train", {
        "a.png": "xg, smile, long hair", "b.png": "xg, smile, smile", "c.png": "xg, long hair"},
     "removed 2 tags (blue hair and Red_Eyes) from 3 captions"),
    ("replace (or)", lambda ids: ReplaceTags(["blue hair", "smile"], ["aqua hair"]), "train", {
        "a.png": "xg, aqua hair, long hair", "b.png": "xg, aqua hair, red eyes"},
     "replaced blue hair or smile with aqua hair in 2 captions"),
    ("replace (and)", lambda ids: ReplaceTags(["red eyes", "blue hair"], ["x", "smile"], "and"), "train", {
        "b.png": "xg, x, smile, smile"}, "replaced red eyes and blue hair with x and smile in 1 caption"),
    ("replace with nothing", lambda ids: ReplaceTags(["long hair"], []), "train", {
        "a.png": "xg, smile, blue hair", "c.png": "xg, red eyes"}, "deleted long hair from 2 captions"),
    ("replace into trigger", lambda ids: ReplaceTags(["smile"], ["Kiko"], make_trigger=True), "train", {
        "trigger": "Kiko", "a.png": "Kiko, blue hair, long hair", "b.png": "Kiko, blue hair, red eyes",
        "c.png": "Kiko, red eyes, long hair", "d.png": "Kiko"},
     "replaced smile with Kiko in 2 captions; the trigger word is now Kiko (was xg), put first in 4 captions"),
    ("remove duplicates", lambda ids: RemoveDuplicates(), "train", {
        "b.png": "xg, blue hair, red eyes, smile"}, "removed 1 duplicate tag from 1 caption"),
    ("sort", lambda ids: SortTags(), "train", {
        "a.png": "xg, blue hair, long hair, smile", "c.png": "xg, long hair, red eyes"},
     "sorted the tags of 2 captions"),
    ("sort reg (no trigger rule)", lambda ids: SortTags(), "reg", {"r2.png": "man, smile, xg"},
     "sorted the tags of 1 caption"),
    ("remove the trigger from reg", lambda ids: RemoveTags(["xg"]), "reg", {"r2.png": "man, smile"},
     "removed 1 tag (xg) from 1 caption"),
    ("edit a caption", lambda ids: EditCaption(ids["c.png"], "red eyes,  short hair ,"), "train", {
        "c.png": "xg, red eyes, short hair"},
     "edited the caption of picture #{c.png} (the trigger word xg stays first: put it back)"),
    ("caption an untagged picture", lambda ids: EditCaption(ids["d.png"], ""), "train", {"d.png": "xg"},
     "edited the caption of picture #{d.png} (the trigger word xg stays first: put it back)"),
    ("edit keeping the trigger", lambda ids: EditCaption(ids["a.png"], "xg, smile"), "train", {
        "a.png": "xg, smile"}, "edited the caption of picture #{a.png}"),
]


@pytest.mark.parametrize(("op_of", "kind", "changes", "description"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
async def test_op_then_undo_then_redo(world: World, op_of: OpMaker, kind: str,
                                      changes: dict[str, str | None], description: str) -> None:
    expected = {**INITIAL, **changes}
    result = await world.curation.apply(world.project, op_of(world.ids), kind)
    for name, image_id in world.ids.items():
        description = description.replace(f"{{{name}}}", str(image_id))
    assert result.description == description
    assert result.changed == len([name for name in changes if name != "trigger"])
    assert result.trigger == expected["trigger"]
    assert (result.can_undo, result.can_redo) == (True, False)
    assert await world.state() == expected

    undone = await world.curation.undo(world.project)
    assert undone.description == f"undid: {description}"
    assert (undone.trigger, undone.can_undo, undone.can_redo) == ("xg", False, True)
    assert await world.state() == INITIAL

    redone = await world.curation.redo(world.project)
    assert redone.description == f"redid: {description}"
    assert (redone.trigger, redone.can_undo, redone.can_redo) == (expected["trigger"], True, False)
    assert await world.state() == expected


async def test_or_finds_any_tag_and_finds_all(world: World) -> None:
    either = await world.curation.apply(world.project, ReplaceTags(["blue hair", "red eyes"], ["eyes"], "or"))
    assert either.changed == 3
    assert await world.state() == {**INITIAL, "a.png": "xg, smile, eyes, long hair",
                                   "b.png": "xg, eyes, smile, smile", "c.png": "xg, eyes, long hair"}
    await world.curation.undo(world.project)
    both = await world.curation.apply(world.project, ReplaceTags(["blue hair", "red eyes"], ["eyes"], "and"))
    assert both.changed == 1
    assert await world.state() == {**INITIAL, "b.png": "xg, eyes, smile, smile"}


async def test_replacement_already_in_a_caption_is_not_doubled(world: World) -> None:
    await world.curation.apply(world.project, ReplaceTags(["blue hair"], ["smile", "aqua"]))
    assert await world.state() == {**INITIAL, "a.png": "xg, smile, aqua, long hair",
                                   "b.png": "xg, aqua, red eyes, smile, smile"}


async def test_an_op_that_changes_nothing_is_not_recorded(world: World) -> None:
    await world.curation.apply(world.project, SortTags())
    await world.curation.undo(world.project)
    result = await world.curation.apply(world.project, RemoveTags(["green hair", "hat"]))
    assert result.description == "no training caption has green hair or hat"
    assert (result.changed, result.can_undo, result.can_redo) == (0, False, True)
    assert [entry.op for entry in await world.curation.history(world.project)] == ["sort_tags"]
    assert await world.state() == INITIAL


# --- history --------------------------------------------------------------------------------------


async def test_history_survives_a_restart(world: World) -> None:
    await world.curation.apply(world.project, SetTrigger("XingBar"))
    await world.curation.apply(world.project, RemoveTags(["smile"]))
    after_both = await world.state()
    await world.reopen()

    entries = await world.curation.history(world.project)
    assert [(entry.op, entry.state, entry.changed) for entry in entries] == [
        ("remove_tags", "done", 2), ("set_trigger", "done", 4)]
    assert (entries[1].trigger_before, entries[1].trigger_after) == ("xg", "XingBar")

    await world.curation.undo(world.project)
    await world.curation.undo(world.project)
    assert await world.state() == INITIAL
    with pytest.raises(Invalid, match="nothing to undo"):
        await world.curation.undo(world.project)
    await world.reopen()
    await world.curation.redo(world.project)
    last = await world.curation.redo(world.project)
    assert (last.can_undo, last.can_redo) == (True, False)
    assert await world.state() == after_both
    with pytest.raises(Invalid, match="nothing to redo"):
        await world.curation.redo(world.project)


async def test_a_new_op_clears_what_was_undone(world: World) -> None:
    await world.curation.apply(world.project, RemoveTags(["smile"]))
    await world.curation.apply(world.project, SortTags())
    await world.curation.undo(world.project)
    result = await world.curation.apply(world.project, RemoveDuplicates())
    assert (result.changed, result.can_undo, result.can_redo) == (0, True, True)  # nothing left to de-duplicate
    result = await world.curation.apply(world.project, RemoveTags(["long hair"]))
    assert (result.can_undo, result.can_redo) == (True, False)
    with pytest.raises(Invalid, match="nothing to redo"):
        await world.curation.redo(world.project)
    assert [(entry.op, entry.state) for entry in await world.curation.history(world.project)] == [
        ("remove_tags", "done"), ("remove_tags", "done")]
    await world.curation.undo(world.project)
    await world.curation.undo(world.project)
    assert await world.state() == INITIAL


async def test_history_keeps_the_newest_entries(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(curation_service, "HISTORY_LIMIT", 2)
    for tag in ("smile", "long hair", "red eyes"):
        await world.curation.apply(world.project, RemoveTags([tag]))
    assert len(await world.curation.history(world.project)) == 2
    await world.curation.undo(world.project)
    await world.curation.undo(world.project)
    with pytest.raises(Invalid, match="nothing to undo"):
        await world.curation.undo(world.project)
    assert await world.state() == {**INITIAL, "a.png": "xg, blue hair, long hair",
                                   "b.png": "xg, blue hair, red eyes"}


async def test_undo_after_an_outside_change_clears_the_history_instead(world: World) -> None:
    await world.curation.apply(world.project, RemoveTags(["smile"]))
    async with world.db.transaction() as tx:  # what storing a re-tag's captions does
        await image_rows.set_caption(tx, world.ids["a.png"], "xg, retagged")
    atomic_write_text(world.caption_file("a.png"), "xg, retagged")
    before = await world.state()
    with pytest.raises(Invalid, match="changed outside curation"):
        await world.curation.undo(world.project)
    assert await world.state() == before
    assert await world.curation.history(world.project) == []


async def test_undo_skips_pictures_deleted_since(world: World) -> None:
    await world.curation.apply(world.project, RemoveTags(["smile"]))
    async with world.db.transaction() as tx:
        await image_rows.delete(tx, world.ids["b.png"])
    world.caption_file("b.png").unlink()
    del world.ids["b.png"]
    result = await world.curation.undo(world.project)
    assert result.changed == 1
    assert await world.state() == {key: value for key, value in INITIAL.items() if key != "b.png"}


async def test_a_database_from_before_curation_gets_the_history_table(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path / "data")
    old = await Database.open(layout.db_path, target_version=3)
    async with old.transaction() as tx:
        await upsert_user(tx, USER, "alice")
        project = await project_rows.insert_project(tx, USER, "Old", "Old", "xg", "man")
        image_id = await image_rows.insert(tx, project_id=project.id, kind="train", filename="a.png", sha256="a",
                                           phash=None, width=512, height=512, source="a.png")
        await image_rows.set_caption(tx, image_id, "xg, smile")
    await old.close()
    db = await Database.open(layout.db_path)
    try:
        curation = Curation(db, layout)
        assert await curation.history(project) == []
        assert (await curation.apply(project, RemoveTags(["smile"]))).changed == 1
        await curation.undo(project)
        assert await image_rows.captions(db, project.id) == {image_id: "xg, smile"}
    finally:
        await db.close()


# --- trigger rules --------------------------------------------------------------------------------


def two_tokens_a_letter(text: str) -> int:
    """A stand-in for the text encoder's tokenizer."""
    return 2 * len(text)


@pytest.mark.parametrize(("op", "kind", "message"), [
    (SetTrigger(""), "train", "the trigger word is empty"),
    (SetTrigger("Xing,Bar"), "train", "contains a comma"),
    (SetTrigger("Xing Bar"), "train", "contains spaces"),
    (SetTrigger("X" * 38), "train", "takes 76 tokens, more than the 75"),
    (SetTrigger("XingBar"), "reg", "belongs to the training captions only"),
    (RemoveTags(["smile", "XG"]), "train", "xg is the trigger word"),
    (ReplaceTags(["xg"], ["man"]), "train", "xg is the trigger word"),
    (ReplaceTags(["smile"], ["Ki ko"], make_trigger=True), "train", "contains spaces"),
    (ReplaceTags(["smile"], ["Kiko"], make_trigger=True), "reg", "belongs to the training captions only"),
    (EditCaption(999, "smile"), "train", "picture #999 is not in this project's training pictures"),
])
async def test_refused_ops_change_nothing(world: World, op: Op, kind: str, message: str) -> None:
    with pytest.raises(Invalid, match=message):
        await world.curation.apply(world.project, op, kind, count_tokens=two_tokens_a_letter)
    assert await world.state() == INITIAL
    assert await world.curation.history(world.project) == []


def test_trigger_word_checks() -> None:
    assert validate_trigger(" XingBar ") == "XingBar"
    assert validate_trigger("X" * 37, count_tokens=two_tokens_a_letter) == "X" * 37  # 74 tokens
    assert validate_trigger("X" * 38, count_tokens=two_tokens_a_letter, max_tokens=None) == "X" * 38
    with pytest.raises(Invalid, match="takes 12 tokens, more than the 10"):
        validate_trigger("XingBar", count_tokens=lambda text: 12, max_tokens=10)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: RemoveTags([" ", ","]), "say which tags to remove"),
    (lambda: ReplaceTags([], ["a"]), "say which tags to search for"),
    (lambda: ReplaceTags(["a"], ["b"], "xor"), "search mode 'xor' is unknown"),
    (lambda: ReplaceTags(["a"], ["b", "c"], make_trigger=True), "exactly one tag"),
    (lambda: ReplaceTags(["a"], [], make_trigger=True), "exactly one tag"),
])
def test_malformed_ops_are_refused(make: Callable[[], Op], message: str) -> None:
    with pytest.raises(Invalid, match=message):
        make()


async def test_ops_use_the_trigger_word_as_it_is_now(world: World) -> None:
    stale_row = world.project  # still says trigger xg
    await world.curation.apply(stale_row, SetTrigger("Kiko"))
    with pytest.raises(Invalid, match="Kiko is the trigger word"):
        await world.curation.apply(stale_row, RemoveTags(["Kiko"]))
    result = await world.curation.apply(stale_row, RemoveTags(["xg"]))  # the old trigger is an ordinary word now
    assert result.description == "no training caption has xg"


async def test_setting_the_same_trigger_again_changes_nothing(world: World) -> None:
    result = await world.curation.apply(world.project, SetTrigger("xg"))
    assert result.description == "xg is the trigger word, put first in 1 caption"  # d.png had no caption
    again = await world.curation.apply(world.project, SetTrigger("xg"))
    assert (again.description, again.changed) == ("xg is the trigger word, already first in every caption", 0)


# --- caption files --------------------------------------------------------------------------------


async def test_sync_files_repairs_caption_files(world: World) -> None:
    await world.curation.apply(world.project, RemoveTags(["smile"]))
    world.caption_file("a.png").write_text("edited behind our back", encoding="utf-8")
    world.caption_file("b.png").unlink()
    world.caption_file("d.png").write_text("xg, stray", encoding="utf-8")  # no caption in the database
    world.caption_file("r1.png").write_bytes(b"\xff\xfe not utf-8")
    assert await world.curation.sync_files() == 4
    assert await world.state() == {**INITIAL, "a.png": "xg, blue hair, long hair", "b.png": "xg, blue hair, red eyes"}
    assert await world.curation.sync_files(world.project) == 0


async def test_a_failed_file_write_keeps_the_database_and_is_repaired_later(world: World) -> None:
    blocker = world.caption_file("a.png")
    blocker.unlink()
    blocker.mkdir()  # the file cannot be replaced: as good as a full disk
    with pytest.raises(SetupError, match="the captions are saved, but writing their .txt files failed"):
        await world.curation.apply(world.project, RemoveTags(["long hair"]))
    assert (await image_rows.captions(world.db, world.project.id))[world.ids["a.png"]] == "xg, smile, blue hair"
    blocker.rmdir()
    assert await world.curation.sync_files() == 2  # a.txt missing, c.txt still old
    assert await world.state() == {**INITIAL, "a.png": "xg, smile, blue hair", "c.png": "xg, red eyes"}


# --- pure functions -------------------------------------------------------------------------------


def test_split_and_join() -> None:
    assert split_tags(" xg ,, blue   hair , ,smile,") == ["xg", "blue hair", "smile"]
    assert split_tags("") == []
    assert join_tags(["xg", "blue hair"]) == "xg, blue hair"


def test_tags_compare_as_the_tagger_writes_them() -> None:
    from engine.curation.ops import CaptionSet

    current = CaptionSet("reg", "xg", {1: "Blue Hair, ^_^, blue_hair, ^ ^"})
    assert RemoveDuplicates().apply(current).captions == {1: "Blue Hair, ^_^, ^ ^"}
    assert RemoveTags(["BLUE_HAIR"]).apply(current).captions == {1: "^_^, ^ ^"}


@pytest.mark.parametrize("op", [
    SetTrigger("XingBar"), RemoveTags(["a", "b, c"]), ReplaceTags(["a"], ["b"], "and", True), RemoveDuplicates(),
    SortTags(), EditCaption(7, "xg, a"),
])
def test_ops_round_trip_through_json(op: Op) -> None:
    assert op_from_dict(json.loads(json.dumps(op.to_dict()))) == op


def test_unknown_op_is_refused() -> None:
    with pytest.raises(Invalid, match="unknown caption op 'explode'"):
        op_from_dict({"op": "explode"})
