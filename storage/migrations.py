"""Versioned schema migrations, tracked in SQLite's `user_version`.

Each migration runs in its own transaction together with the version bump, so a crash mid-upgrade
leaves the database at the previous version, never half-migrated. Never edit a released migration:
add a new one.
"""
from __future__ import annotations

import aiosqlite

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "users, projects, images and captions",
        """
        CREATE TABLE users (
            id          INTEGER PRIMARY KEY,             -- Discord user id (0 = local CLI user)
            name        TEXT NOT NULL DEFAULT '',
            created_at  REAL NOT NULL
        );
        CREATE TABLE projects (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            name        TEXT NOT NULL,
            dir_name    TEXT NOT NULL,                   -- folder under data/users/<user_id>/, fixed at creation
            trigger     TEXT NOT NULL,
            class_name  TEXT NOT NULL,
            created_at  REAL NOT NULL,
            UNIQUE (user_id, name COLLATE NOCASE),
            UNIQUE (user_id, dir_name)
        );
        CREATE TABLE images (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            project_id  INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
            kind        TEXT NOT NULL CHECK (kind IN ('train', 'reg')),
            filename    TEXT NOT NULL,
            sha256      TEXT NOT NULL,
            phash       TEXT,
            width       INTEGER NOT NULL,
            height      INTEGER NOT NULL,
            source      TEXT NOT NULL DEFAULT '',
            created_at  REAL NOT NULL,
            UNIQUE (project_id, kind, filename)
        );
        CREATE INDEX images_by_project ON images(project_id, kind);
        CREATE TABLE captions (
            image_id    INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
            text        TEXT NOT NULL,
            updated_at  REAL NOT NULL
        );
        """,
    ),
    (
        2,
        "jobs and job events",
        """
        CREATE TABLE jobs (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id      INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            project_id   INTEGER REFERENCES projects(id) ON DELETE SET NULL,
            kind         TEXT NOT NULL,
            lane         TEXT NOT NULL CHECK (lane IN ('gpu', 'cpu')),
            priority     INTEGER NOT NULL DEFAULT 0,
            state        TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
            params       TEXT NOT NULL DEFAULT '{}',
            progress     TEXT,                           -- latest progress event, JSON
            result       TEXT,                           -- JSON from the worker's done event
            error        TEXT,
            attempts     INTEGER NOT NULL DEFAULT 0,
            worker_pid   INTEGER,
            created_at   REAL NOT NULL,
            started_at   REAL,
            finished_at  REAL
        );
        CREATE INDEX jobs_by_state ON jobs(state, lane);
        CREATE INDEX jobs_by_user ON jobs(user_id, state);
        CREATE TABLE job_events (
            id       INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id   INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            ts       REAL NOT NULL,
            type     TEXT NOT NULL,
            data     TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX job_events_by_job ON job_events(job_id, id);
        """,
    ),
    (
        3,
        "artifacts, status messages, download links and settings",
        """
        CREATE TABLE artifacts (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            project_id  INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
            job_id      INTEGER REFERENCES jobs(id) ON DELETE SET NULL,
            kind        TEXT NOT NULL,
            path        TEXT NOT NULL,                   -- relative to the project folder
            size        INTEGER NOT NULL,
            sha256      TEXT NOT NULL,
            created_at  REAL NOT NULL,
            UNIQUE (project_id, path)
        );
        CREATE TABLE status_messages (
            job_id      INTEGER PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
            channel_id  INTEGER NOT NULL,
            message_id  INTEGER NOT NULL,
            rendered    TEXT NOT NULL DEFAULT '',        -- last content sent, to skip no-op edits
            edited_at   REAL NOT NULL DEFAULT 0
        );
        CREATE TABLE download_links (
            token_id    TEXT PRIMARY KEY,
            artifact_id INTEGER NOT NULL REFERENCES artifacts(id) ON DELETE CASCADE,
            user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            expires_at  REAL NOT NULL,
            created_at  REAL NOT NULL
        );
        CREATE TABLE settings (
            key    TEXT PRIMARY KEY,
            value  TEXT NOT NULL
        );
        """,
    ),
    (
        4,
        "caption curation history (undo/redo)",
        """
        CREATE TABLE caption_history (
            id              INTEGER PRIMARY KEY AUTOINCREMENT,
            project_id      INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
            kind            TEXT NOT NULL CHECK (kind IN ('train', 'reg')),
            op              TEXT NOT NULL,               -- the op as JSON (engine.curation.ops)
            description     TEXT NOT NULL,
            captions_before TEXT NOT NULL,               -- JSON {image id: caption, null = none}, changed ones only
            captions_after  TEXT NOT NULL,               -- JSON {image id: caption}, the same images
            trigger_before  TEXT NOT NULL,
            trigger_after   TEXT NOT NULL,
            state           TEXT NOT NULL CHECK (state IN ('done', 'undone')),
            created_at      REAL NOT NULL
        );
        CREATE INDEX caption_history_by_project ON caption_history(project_id, state, id);
        """,
    ),
    (
        5,
        "curation marks, pruned tags and shown training plans in tables of their own (from settings)",
        """
        CREATE TABLE curation_marks (                    -- tags marked for removal in /lora curate
            project_id  INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
            kind        TEXT NOT NULL CHECK (kind IN ('train', 'reg')),
            tag         TEXT NOT NULL,
            position    INTEGER NOT NULL,                -- the order they were marked in
            PRIMARY KEY (project_id, kind, tag)
        );
        CREATE TABLE pruned_tags (                       -- removed from the captions: the character's looks
            project_id  INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
            tag         TEXT NOT NULL,
            position    INTEGER NOT NULL,
            PRIMARY KEY (project_id, tag)
        );
        CREATE TABLE training_plans (                    -- a plan shown with its Start button
            token       TEXT PRIMARY KEY,
            user_id     INTEGER NOT NULL,
            project_id  INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
            overrides   TEXT NOT NULL,                   -- JSON {option: value as typed}
            family      TEXT,                            -- NULL: the server's default
            created_at  REAL NOT NULL
        );
        CREATE INDEX training_plans_by_age ON training_plans(created_at);

        -- What the settings table held: 'curate.selection.<project>.<kind>' and 'curate.pruned.<project>'
        -- (JSON lists), 'train.pending.<token>' (JSON, or null once started). Rows of deleted projects and
        -- plans already started are dropped.
        INSERT INTO curation_marks (project_id, kind, tag, position)
            SELECT p.id, k.kind, j.value, j.key
            FROM projects p, (SELECT 'train' AS kind UNION ALL SELECT 'reg') k
            JOIN settings s ON s.key = 'curate.selection.' || p.id || '.' || k.kind, json_each(s.value) j
            WHERE j.type = 'text';
        INSERT INTO pruned_tags (project_id, tag, position)
            SELECT p.id, j.value, j.key
            FROM projects p JOIN settings s ON s.key = 'curate.pruned.' || p.id, json_each(s.value) j
            WHERE j.type = 'text';
        INSERT INTO training_plans (token, user_id, project_id, overrides, family, created_at)
            SELECT substr(s.key, 15), json_extract(s.value, '$.user_id'), p.id,
                   COALESCE(json_extract(s.value, '$.overrides'), '{}'), json_extract(s.value, '$.family'),
                   CAST(strftime('%s', 'now') AS REAL)
            FROM settings s JOIN projects p ON p.id = json_extract(s.value, '$.project_id')
            WHERE s.key LIKE 'train.pending.%' AND json_valid(s.value) AND json_type(s.value) = 'object';
        DELETE FROM settings
            WHERE key LIKE 'curate.selection.%' OR key LIKE 'curate.pruned.%' OR key LIKE 'train.pending.%';
        """,
    ),
]

LATEST_VERSION = MIGRATIONS[-1][0]


class SchemaTooNew(RuntimeError):
    pass


async def migrate(conn: aiosqlite.Connection, target: int | None = None) -> int:
    """Brings the database up to `target` (default: latest). Returns the version it ends at."""
    target = LATEST_VERSION if target is None else target
    async with conn.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    current = int(row[0]) if row else 0
    if current > LATEST_VERSION:
        raise SchemaTooNew(
            f"the database is at schema version {current} but this lorabake only knows up to "
            f"{LATEST_VERSION}: upgrade lorabake, or point data_dir at another folder"
        )
    for version, _description, sql in MIGRATIONS:
        if current < version <= target:
            # executescript commits any open transaction first, so BEGIN/COMMIT live inside the script.
            await conn.executescript(f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {version};\nCOMMIT;")
            current = version
    return current
