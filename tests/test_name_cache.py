"""The project autocomplete answers from memory: kept current by the engine's own changes, reloaded after a
while for changes another process made, and never showing another member's projects."""
from __future__ import annotations

from engine.config import Config
from engine.facade import Engine
from tests.conftest import ALICE_ACTOR, BOB_ACTOR


async def test_autocomplete_follows_the_engines_changes_without_the_database(engine: Engine) -> None:
    await engine.create_project(ALICE_ACTOR, "XingBar30", "XingBar", "man")
    await engine.create_project(BOB_ACTOR, "BobsDog", "Dogg", "dog")
    assert await engine.project_names(ALICE_ACTOR, "") == ["XingBar30"]
    queries = 0
    load = engine._names._load

    async def counted(user_id: int) -> list[str]:
        nonlocal queries
        queries += 1
        return await load(user_id)

    engine._names._load = counted
    await engine.create_project(ALICE_ACTOR, "Xana", "Xanax", "woman")
    await engine.rename_project(ALICE_ACTOR, "XingBar30", "XingBar31")
    assert await engine.project_names(ALICE_ACTOR, "x") == ["Xana", "XingBar31"]
    assert await engine.project_names(ALICE_ACTOR, "bar") == ["XingBar31"]   # containing, after starting
    await engine.delete_project(ALICE_ACTOR, "Xana")
    assert await engine.project_names(ALICE_ACTOR, "") == ["XingBar31"]
    assert await engine.project_names(BOB_ACTOR, "") == ["BobsDog"]
    assert queries == 1, "Alice's names were read once (Bob's entry was new), then kept in memory"


async def test_another_process_s_changes_show_once_the_entry_is_old(engine: Engine, config: Config) -> None:
    await engine.create_project(ALICE_ACTOR, "First", "Frst", "man")
    assert await engine.project_names(ALICE_ACTOR) == ["First"]
    other = await Engine.open(config)   # the command line beside the bot
    try:
        await other.create_project(ALICE_ACTOR, "Second", "Scnd", "man")
    finally:
        await other.close()
    assert await engine.project_names(ALICE_ACTOR) == ["First"], "not seen at once"
    engine._names._ttl_s = 0.0
    assert await engine.project_names(ALICE_ACTOR) == ["First", "Second"]
