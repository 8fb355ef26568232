"""storage/: the SQLite database (WAL, foreign keys, migrations, transactions) and the on-disk layout
(orphan sweep, crash-safe writes), plus the engine's start-up sweep of folders a crash left behind."""
from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from engine.config import Config
from engine.errors import SetupError
from engine.facade import Engine
from storage import curation as curation_rows
from storage import migrations
from storage import training_plans as plan_rows
from storage.db import Database
from storage.layout import PROJECT_SUBDIRS, DataLayout, atomic_write_bytes, atomic_write_text
from storage.migrations import LATEST_VERSION, SchemaTooNew
from tests.conftest import ALICE, ALICE_ACTOR, BOB

V1_TABLES = {"users", "projects", "images", "captions"}
LATER_TABLES = {"jobs", "job_events", "artifacts", "status_messages", "download_links", "settings", "caption_history",
                "curation_marks", "pruned_tags", "training_plans"}


async def _tables(db: Database) -> set[str]:
    rows = await db.fetchall("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    return {row[0] for row in rows}


async def _add_user_and_project(db: Database, user_id: int = ALICE, name: str = "Xing") -> int:
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO users (id, name, created_at) VALUES (?, ?, ?)", (user_id, "alice", 1.0))
        return await tx.execute(
            "INSERT INTO projects (user_id, name, dir_name, trigger, class_name, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (user_id, name, name, "xg", "man", 2.0),
        )


@pytest.fixture
async def db(tmp_path: Path):
    opened = await Database.open(tmp_path / "data" / "lorabake.db")
    yield opened
    await opened.close()


# --- the connection -------------------------------------------------------------------------------


async def test_open_uses_wal_and_foreign_keys_and_latest_schema(db: Database) -> None:
    assert (await db.fetchone("PRAGMA journal_mode"))[0].lower() == "wal"
    assert (await db.fetchone("PRAGMA foreign_keys"))[0] == 1
    assert await db.schema_version() == LATEST_VERSION
    assert await _tables(db) == V1_TABLES | LATER_TABLES
    # WAL is a property of the file: a second, plain connection sees it too.
    with sqlite3.connect(db.path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"


async def test_foreign_keys_are_enforced(db: Database) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        async with db.transaction() as tx:
            await tx.execute(
                "INSERT INTO projects (user_id, name, dir_name, trigger, class_name, created_at) "
                "VALUES (424242, 'p', 'p', 't', 'c', 0)"
            )
    assert await db.fetchall("SELECT * FROM projects") == []


# --- migrations -----------------------------------------------------------------------------------


async def test_upgrade_from_version_1_keeps_rows_and_adds_tables(tmp_path: Path) -> None:
    path = tmp_path / "lorabake.db"
    old = await Database.open(path, target_version=1)
    try:
        assert await old.schema_version() == 1
        assert await _tables(old) == V1_TABLES
        project_id = await _add_user_and_project(old)
        async with old.transaction() as tx:
            image_id = await tx.execute(
                "INSERT INTO images (project_id, kind, filename, sha256, width, height, created_at) "
                "VALUES (?, 'train', 'a.png', 'abc', 512, 768, 3.0)", (project_id,))
            await tx.execute("INSERT INTO captions (image_id, text, updated_at) VALUES (?, 'xg, 1boy', 4.0)",
                             (image_id,))
    finally:
        await old.close()

    new = await Database.open(path)
    try:
        assert await new.schema_version() == LATEST_VERSION
        assert await _tables(new) == V1_TABLES | LATER_TABLES
        user = await new.fetchone("SELECT id, name, created_at FROM users")
        assert tuple(user) == (ALICE, "alice", 1.0)
        project = await new.fetchone("SELECT id, user_id, name, dir_name, trigger, class_name FROM projects")
        assert tuple(project) == (project_id, ALICE, "Xing", "Xing", "xg", "man")
        image = await new.fetchone("SELECT project_id, filename, width, height FROM images")
        assert tuple(image) == (project_id, "a.png", 512, 768)
        assert (await new.fetchone("SELECT text FROM captions WHERE image_id = ?", (image_id,)))[0] == "xg, 1boy"
        # The new tables work with the old rows.
        async with new.transaction() as tx:
            await tx.execute(
                "INSERT INTO jobs (user_id, project_id, kind, lane, state, created_at) "
                "VALUES (?, ?, 'check', 'gpu', 'queued', 5.0)", (ALICE, project_id))
        assert (await new.fetchone("SELECT COUNT(*) FROM jobs"))[0] == 1
    finally:
        await new.close()
    # Opening again is a no-op, not a second migration.
    again = await Database.open(path)
    try:
        assert await again.schema_version() == LATEST_VERSION
        assert (await again.fetchone("SELECT COUNT(*) FROM projects"))[0] == 1
    finally:
        await again.close()


async def test_version_5_moves_curation_state_and_plans_out_of_settings(tmp_path: Path) -> None:
    """What version 4 kept as settings rows moves into tables tied to their project: marks and pruned tags
    in their order, plans not yet started; rows of a deleted project and started plans are dropped, and a
    deleted project now takes its rows with it."""
    path = tmp_path / "lorabake.db"
    old = await Database.open(path, target_version=4)
    try:
        project_id = await _add_user_and_project(old)
        rows = {f"curate.selection.{project_id}.train": '["red hair", "blue eyes"]',
                f"curate.selection.{project_id}.reg": '["solo"]',
                f"curate.pruned.{project_id}": '["purple hair", "slim"]',
                "curate.pruned.999": '["of a deleted project"]',
                "train.pending.aaaaaaaaaaaa": json.dumps({"user_id": ALICE, "project_id": project_id,
                                                          "overrides": {"epochs": "3"}, "family": "sd15"}),
                "train.pending.bbbbbbbbbbbb": "null",
                "commands.sync_hash": "keep me"}
        async with old.transaction() as tx:
            await tx.executemany("INSERT INTO settings (key, value) VALUES (?, ?)", list(rows.items()))
    finally:
        await old.close()

    new = await Database.open(path)
    try:
        assert await curation_rows.marked_tags(new, project_id, "train") == ["red hair", "blue eyes"]
        assert await curation_rows.marked_tags(new, project_id, "reg") == ["solo"]
        assert await curation_rows.pruned_tags(new, project_id) == ["purple hair", "slim"]
        plan = await plan_rows.get(new, "aaaaaaaaaaaa")
        assert plan is not None and (plan.user_id, plan.project_id, plan.overrides, plan.family) == (
            ALICE, project_id, {"epochs": "3"}, "sd15")
        assert await plan_rows.get(new, "bbbbbbbbbbbb") is None
        assert [tuple(r) for r in await new.fetchall("SELECT key, value FROM settings")] == [
            ("commands.sync_hash", "keep me")]
        async with new.transaction() as tx:
            await tx.execute("DELETE FROM projects WHERE id = ?", (project_id,))
        for table in ("curation_marks", "pruned_tags", "training_plans"):
            assert (await new.fetchone(f"SELECT COUNT(*) FROM {table}"))[0] == 0, table
    finally:
        await new.close()


async def test_database_newer_than_code_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "lorabake.db"
    first = await Database.open(path)
    await _add_user_and_project(first)
    await first.close()
    with sqlite3.connect(path) as raw:
        raw.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")

    with pytest.raises(SchemaTooNew) as caught:
        await Database.open(path)
    message = str(caught.value)
    assert str(LATEST_VERSION + 1) in message and str(LATEST_VERSION) in message
    assert "upgrade lorabake" in message
    assert "\n" not in message

    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION + 1
        assert raw.execute("SELECT name FROM projects").fetchall() == [("Xing",)]


def test_migrations_are_numbered_in_order() -> None:
    versions = [version for version, _description, _sql in migrations.MIGRATIONS]
    assert versions == list(range(1, len(versions) + 1))
    assert versions[-1] == LATEST_VERSION


# --- transactions ---------------------------------------------------------------------------------


async def test_failing_statement_rolls_back_the_whole_transaction(db: Database) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO users (id, name, created_at) VALUES (1, 'one', 0)")
            await tx.execute("INSERT INTO settings (key, value) VALUES ('k', 'v')")
            await tx.execute("INSERT INTO users (id, name, created_at) VALUES (1, 'dup', 0)")  # primary key clash
    assert await db.fetchall("SELECT * FROM users") == []
    assert await db.fetchall("SELECT * FROM settings") == []
    # The connection is usable afterwards: no transaction was left open, the lock was released.
    assert await db.execute("INSERT INTO users (id, name, created_at) VALUES (2, 'two', 0)") == 2
    assert [tuple(r) for r in await db.fetchall("SELECT id, name FROM users")] == [(2, "two")]


async def test_python_error_inside_transaction_rolls_back(db: Database) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO users (id, name, created_at) VALUES (7, 'seven', 0)")
            raise RuntimeError("boom")
    assert await db.fetchall("SELECT * FROM users") == []


async def test_cancelled_task_rolls_back_its_transaction(db: Database) -> None:
    inside = asyncio.Event()

    async def writer() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO users (id, name, created_at) VALUES (9, 'nine', 0)")
            inside.set()
            await asyncio.Event().wait()  # never returns: cancelled mid-transaction

    task = asyncio.create_task(writer())
    await asyncio.wait_for(inside.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await db.fetchall("SELECT * FROM users") == []
    await db.execute("INSERT INTO users (id, name, created_at) VALUES (10, 'ten', 0)")
    assert (await db.fetchone("SELECT COUNT(*) FROM users"))[0] == 1


async def test_committed_transaction_is_visible_to_another_connection(db: Database) -> None:
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO users (id, name, created_at) VALUES (3, 'three', 0)")
    with sqlite3.connect(db.path) as other:
        assert other.execute("SELECT name FROM users WHERE id = 3").fetchone() == ("three",)


# --- cascades -------------------------------------------------------------------------------------


async def test_deleting_a_project_cascades_to_images_and_captions(db: Database) -> None:
    doomed = await _add_user_and_project(db)
    async with db.transaction() as tx:
        kept = await tx.execute(
            "INSERT INTO projects (user_id, name, dir_name, trigger, class_name, created_at) "
            "VALUES (?, 'Other', 'Other', 'ot', 'woman', 0)", (ALICE,))
        image_ids = []
        for project_id, filename in ((doomed, "a.png"), (doomed, "b.png"), (kept, "c.png")):
            image_id = await tx.execute(
                "INSERT INTO images (project_id, kind, filename, sha256, width, height, created_at) "
                "VALUES (?, 'train', ?, 'x', 64, 64, 0)", (project_id, filename))
            await tx.execute("INSERT INTO captions (image_id, text, updated_at) VALUES (?, ?, 0)",
                             (image_id, f"caption {filename}"))
            image_ids.append(image_id)
    assert (await db.fetchone("SELECT COUNT(*) FROM captions"))[0] == 3

    assert await db.execute("DELETE FROM projects WHERE id = ?", (doomed,)) == 1

    assert [r[0] for r in await db.fetchall("SELECT filename FROM images")] == ["c.png"]
    assert [r[0] for r in await db.fetchall("SELECT image_id FROM captions")] == [image_ids[2]]
    assert [r[0] for r in await db.fetchall("SELECT id FROM projects")] == [kept]


async def test_deleting_a_user_cascades_to_projects_and_jobs(db: Database) -> None:
    project_id = await _add_user_and_project(db, ALICE)
    await _add_user_and_project(db, BOB, "BobsProject")
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO jobs (user_id, project_id, kind, lane, state, created_at) "
                         "VALUES (?, ?, 'check', 'gpu', 'queued', 0)", (ALICE, project_id))
    await db.execute("DELETE FROM users WHERE id = ?", (ALICE,))
    assert [r[0] for r in await db.fetchall("SELECT name FROM projects")] == ["BobsProject"]
    assert (await db.fetchone("SELECT COUNT(*) FROM jobs"))[0] == 0


# --- the file layout ------------------------------------------------------------------------------


def test_sweep_orphans_removes_unknown_project_folders_and_empties_trash(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path / "data")
    layout.ensure()
    known = layout.create_project_dirs(ALICE, "Known")
    (known.dataset / "a.png").write_bytes(b"keep me")
    orphan = layout.create_project_dirs(ALICE, "Orphan")
    (orphan.dataset / "b.png").write_bytes(b"left by a crash")
    other_user_orphan = layout.create_project_dirs(BOB, "Known")  # same dir name, different user
    (layout.trash_dir / "half-deleted" / "dataset").mkdir(parents=True)
    (layout.trash_dir / "half-deleted" / "dataset" / "c.png").write_bytes(b"x")
    (layout.trash_dir / "stray.tmp").write_bytes(b"y")
    not_a_user = layout.users_dir / "README"
    not_a_user.mkdir()
    (not_a_user / "Whatever").mkdir()

    removed = layout.sweep_orphans({(ALICE, "Known")})

    assert sorted(removed) == sorted([orphan.root, other_user_orphan.root])
    assert not orphan.root.exists() and not other_user_orphan.root.exists()
    assert (known.dataset / "a.png").read_bytes() == b"keep me"
    assert all((known.root / sub).is_dir() for sub in PROJECT_SUBDIRS)
    assert list(layout.trash_dir.iterdir()) == []
    assert (not_a_user / "Whatever").is_dir()  # not ours to judge: only numeric user folders are swept
    # Nothing left to do the second time.
    assert layout.sweep_orphans({(ALICE, "Known")}) == []


def test_discard_removes_a_folder_and_leaves_trash_empty(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path / "data")
    layout.ensure()
    dirs = layout.create_project_dirs(ALICE, "Gone")
    (dirs.output / "x.safetensors").write_bytes(b"z" * 100)
    layout.discard(dirs.root)
    assert not dirs.root.exists()
    assert list(layout.trash_dir.iterdir()) == []
    layout.discard(dirs.root)  # already gone: no error


def test_atomic_write_replaces_content_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "caption.txt"
    atomic_write_bytes(target, b"first")
    assert target.read_bytes() == b"first"
    atomic_write_bytes(target, b"second, longer content")
    assert target.read_bytes() == b"second, longer content"
    atomic_write_text(target, "xing, 1boy, ünïcode")
    assert target.read_text(encoding="utf-8") == "xing, 1boy, ünïcode"
    assert [p.name for p in target.parent.iterdir()] == ["caption.txt"]


def test_failed_atomic_write_keeps_old_content_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "caption.txt"
    atomic_write_bytes(target, b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        atomic_write_bytes(tmp_path / "new.txt", 12345)  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["caption.txt"]


# --- the engine's start-up sweep ------------------------------------------------------------------


async def test_engine_open_removes_crash_leftovers_and_keeps_projects(config: Config) -> None:
    engine = await Engine.open(config)
    try:
        project = await engine.create_project(ALICE_ACTOR, "Real", "xg", "man")
    finally:
        await engine.close()
    real = Path(project.path)
    (real / "dataset" / "kohya_settings.json").write_bytes(b"image")  # not a picture: never swept
    layout = DataLayout(config.data_dir)
    ghost = layout.create_project_dirs(ALICE, "Ghost")  # a crash between folders and row
    (ghost.dataset / "b.png").write_bytes(b"orphan")
    (layout.trash_dir / "deadbeef").mkdir()

    reopened = await Engine.open(config)
    try:
        assert not ghost.root.exists()
        assert (real / "dataset" / "kohya_settings.json").read_bytes() == b"image"
        assert list(layout.trash_dir.iterdir()) == []
        assert [p.name for p in await reopened.list_projects(ALICE_ACTOR)] == ["Real"]
        # The swept name is free again.
        again = await reopened.create_project(ALICE_ACTOR, "Ghost", "gh", "man")
        assert Path(again.path) == ghost.root and ghost.root.is_dir()
    finally:
        await reopened.close()


async def test_engine_refuses_a_too_new_database(config: Config) -> None:
    engine = await Engine.open(config)
    await engine.close()
    with sqlite3.connect(DataLayout(config.data_dir).db_path) as raw:
        raw.execute(f"PRAGMA user_version = {LATEST_VERSION + 5}")
    with pytest.raises(SetupError, match=f"schema version {LATEST_VERSION + 5} but this lorabake only knows"):
        await Engine.open(config)


async def test_engine_open_removes_pictures_a_crash_left_without_rows(config: Config) -> None:
    from engine.devtools.pictures import picture
    from engine.intake import IncomingFile
    from tests.conftest import ALICE_ACTOR

    engine = await Engine.open(config)
    await engine.create_project(ALICE_ACTOR, "XingBar30", "XingBar", "man")
    report = await engine.add_images(ALICE_ACTOR, "XingBar30", [IncomingFile("a.png", picture(1, size=(300, 300)))])
    dataset = engine.layout.project(ALICE_ACTOR.user_id, "XingBar30").dataset
    await engine.close()
    kept = dataset / report.accepted[0].filename
    (dataset / "0099_crash.png").write_bytes(picture(2, size=(300, 300)))  # written, row never committed
    (dataset / "0099_crash.txt").write_text("XingBar, solo")
    (dataset / "notes.md").write_text("the owner's own notes stay")

    reopened = await Engine.open(config)
    await reopened.close()
    assert sorted(path.name for path in dataset.iterdir()) == sorted([kept.name, "notes.md"])
