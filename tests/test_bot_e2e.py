"""The real bot, end to end, against the loopback fake Discord: every spine command, ownership of
buttons, restarts. The `fake` fixture fails any test in which the bot broke a Discord limit."""
from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from bot.job_messages import job_embed, job_view
from tests.conftest import ALICE, ALICE_ACTOR, BOB, BOB_ACTOR, MOD, Studio
from tests.discord_helpers import custom_ids, text_of
from tests.helpers import ask, new_project


async def test_commands_are_synced_under_one_lora_group(studio: Studio) -> None:
    commands = studio.fake.commands
    assert sorted((c["type"], c["name"]) for c in commands) == [(1, "lora"), (3, "Add to LoRA project")]
    lora = next(c for c in commands if c["name"] == "lora")
    subcommands = {option["name"] for option in lora["options"]}
    assert {"new", "list", "info", "delete", "queue", "cancel", "check", "upload", "tag", "tags"} <= subcommands


async def test_new_list_info_keep_each_members_projects_private(studio: Studio) -> None:
    created = await new_project(studio)
    assert "Project **XingBar30** created with trigger `XingBar`" in text_of(created)
    assert created["flags"] & 64, "project replies are ephemeral"
    await new_project(studio, BOB, "BobsDog")

    listed = text_of(await ask(studio, ALICE, "lora list"))
    assert "XingBar30" in listed and "BobsDog" not in listed

    choices = await studio.fake.autocomplete(ALICE, "lora info", {"project": ""}, focused="project")
    assert [c["value"] for c in choices] == ["XingBar30"]
    info = text_of(await ask(studio, ALICE, "lora info", {"project": "XingBar30"}))
    assert "Trigger word: `XingBar`" in info and "Class: man" in info
    stranger = text_of(await ask(studio, BOB, "lora info", {"project": "XingBar30"}))
    assert "you have no project called 'XingBar30'" in stranger


async def test_a_refused_job_command_is_told_only_to_the_member(studio: Studio) -> None:
    """Job commands answer in the channel (the status message), but a refusal is private: Bob naming
    Alice's project leaves nothing in the channel, and the public "thinking…" is taken away."""
    await new_project(studio)
    for command, options in (("lora tag", {"project": "XingBar30"}), ("lora reg", {"project": "XingBar30"}),
                             ("lora train", {"project": "XingBar30"}), ("lora samples", {"project": "XingBar30"})):
        answer = await ask(studio, BOB, command, options)
        assert "you have no project called 'XingBar30'" in text_of(answer), command
        assert answer["flags"] & 64, f"{command}: the refusal is ephemeral"
        interaction = list(studio.fake.interactions.values())[-1]
        assert interaction.original_id in studio.fake.deleted_messages, f"{command}: the public deferral is gone"
    public = [m for m in studio.fake.messages.values() if not m["flags"] & 64]
    assert not any("no project called" in text_of(m) for m in public)
    # Alice's own command still answers in the channel, where others can follow the job.
    job = await ask(studio, ALICE, "lora check")
    assert not job["flags"] & 64 and "System check #" in text_of(job)


async def test_bad_input_gets_a_reason_and_changes_nothing(studio: Studio) -> None:
    comma = text_of(await ask(studio, ALICE, "lora new", {"name": "X1", "trigger": "Xing,Bar", "class": "man"}))
    assert "contains a comma" in comma
    spaces = text_of(await ask(studio, ALICE, "lora new", {"name": "X1", "trigger": "Xing Bar", "class": "man"}))
    assert "use one word such as 'XingBar'" in spaces
    await new_project(studio)
    twice = text_of(await new_project(studio))
    assert "already have a project called XingBar30" in twice
    assert [p.name for p in await studio.engine.list_projects(ALICE_ACTOR)] == ["XingBar30"]


async def test_delete_needs_a_confirm_click_and_only_the_owners(studio: Studio) -> None:
    await new_project(studio)
    project = (await studio.engine.list_projects(ALICE_ACTOR))[0]
    confirm = await ask(studio, ALICE, "lora delete", {"project": "XingBar30"})
    assert "Delete **XingBar30**?" in text_of(confirm)
    [button] = custom_ids(confirm)
    assert button == f"lb:del:{project.id}:{ALICE}"
    assert Path(project.path).is_dir(), "nothing is deleted before the click"

    # Bob forges clicks: with Alice's id in the custom_id, and with his own.
    for forged in (button, f"lb:del:{project.id}:{BOB}"):
        click = await studio.fake.forged_click(BOB, confirm["id"], forged)
        await click.acked()
        refusal = await click.wait_followup() if click.response_type in (5, 6) else click.response_data
        assert "someone else's project" in text_of(refusal) or "not yours" in text_of(refusal)
    assert Path(project.path).is_dir()
    assert await studio.engine.list_projects(ALICE_ACTOR)

    click = await studio.fake.click(ALICE, confirm["id"], button)
    await click.acked()
    done = await studio.fake.wait_for_message(lambda m: m["id"] == confirm["id"] and "were deleted" in text_of(m))
    assert custom_ids(done) == []
    assert not Path(project.path).exists()
    assert await studio.engine.list_projects(ALICE_ACTOR) == []


async def test_buttons_keep_working_after_a_restart(studio: Studio) -> None:
    await new_project(studio)
    confirm = await ask(studio, ALICE, "lora delete", {"project": "XingBar30"})
    [button] = custom_ids(confirm)
    await studio.restart()
    click = await studio.fake.click(ALICE, confirm["id"], button)
    await click.acked()
    await studio.fake.wait_for_message(lambda m: m["id"] == confirm["id"] and "were deleted" in text_of(m))
    assert await studio.engine.list_projects(ALICE_ACTOR) == []


async def test_check_job_posts_a_status_message_that_ends_done_and_pings(studio: Studio) -> None:
    interaction = await studio.fake.slash(ALICE, "lora check")
    await interaction.acked()
    status = await interaction.wait_original(lambda m: "System check" in text_of(m))
    assert not status["flags"] & 64, "status messages are public so they can be edited for hours"
    final = await studio.fake.wait_for_message(
        lambda m: m["id"] == status["id"] and "finished" in text_of(m), timeout=60)
    assert "torch" in text_of(final) and custom_ids(final) == []
    ping = await studio.fake.wait_for_message(lambda m: f"<@{ALICE}>" in (m.get("content") or ""))
    assert "system check" in ping["content"] and "finished" in ping["content"]
    assert [int(user) for user in ping["allowed_mentions"]["users"]] == [ALICE]


async def _tracked_hold_job(studio: Studio, tmp_path: Path, actor=ALICE_ACTOR, name: str = "gate"):
    """A job whose end the test controls, with a status message as /lora commands create them."""
    gate = tmp_path / name
    job = await studio.engine.enqueue(actor, "hold", params={"gate": str(gate)})
    bot = studio.service.bot
    message = await bot.get_partial_messageable(studio.fake.channel_id).send(
        embed=job_embed(job), view=job_view(job.id, True))
    await bot.status_messages.track(job, message)
    return job, message, gate


async def test_queue_positions_and_cancel_rights(studio: Studio, tmp_path: Path) -> None:
    running, _, gate = await _tracked_hold_job(studio, tmp_path)
    await asyncio.wait_for(_until(lambda: Path(f"{gate}.started").exists()), 30)
    bobs, bob_message, _ = await _tracked_hold_job(studio, tmp_path, BOB_ACTOR, "bobgate")

    mine = text_of(await ask(studio, BOB, "lora queue"))
    assert f"`#{bobs.id}`" in mine and "#1 in the GPU queue" in mine and f"`#{running.id}`" not in mine
    everyone = text_of(await ask(studio, MOD, "lora queue", {"everyone": True}))
    assert f"`#{running.id}`" in everyone and f"`#{bobs.id}`" in everyone
    not_admin = text_of(await ask(studio, BOB, "lora queue", {"everyone": True}))
    assert f"`#{running.id}`" not in not_admin

    refused = text_of(await ask(studio, BOB, "lora cancel", {"job": running.id}))
    assert "is not yours" in refused
    # A click on Alice's public Cancel button by Bob is refused too.
    [cancel_button] = custom_ids(bob_message and studio.fake.messages[str(bob_message.id)])
    alice_status = next(m for m in studio.fake.messages.values()
                        if f"lb:cancel:{running.id}" in custom_ids(m))
    click = await studio.fake.click(BOB, alice_status["id"], f"lb:cancel:{running.id}")
    assert "is not yours" in text_of(await click.wait_followup())
    assert (await studio.engine.job(running.id)).state == "running"

    # Bob cancels his own queued job by its button; a moderator cancels Alice's running one by command.
    click = await studio.fake.click(BOB, str(bob_message.id), cancel_button)
    assert "was cancelled" in text_of(await click.wait_followup())
    moderated = text_of(await ask(studio, MOD, "lora cancel", {"job": running.id}))
    assert f"Job #{running.id}" in moderated and "was cancelled" in moderated
    edited = await studio.fake.wait_for_message(
        lambda m: m["id"] == alice_status["id"] and "cancelled" in text_of(m) and "server admin" in text_of(m))
    assert custom_ids(edited) == [], "a finished job's message has no Cancel button"


async def test_cancel_autocomplete_offers_own_jobs(studio: Studio, tmp_path: Path) -> None:
    job, _, gate = await _tracked_hold_job(studio, tmp_path)
    choices = await studio.fake.autocomplete(ALICE, "lora cancel", {"job": ""}, focused="job")
    assert [c["value"] for c in choices] == [job.id]
    assert await studio.fake.autocomplete(BOB, "lora cancel", {"job": ""}, focused="job") == []
    gate.write_text("go")


async def test_progress_edits_are_throttled(studio: Studio, tmp_path: Path) -> None:
    job, message, gate = await _tracked_hold_job(studio, tmp_path)
    await asyncio.wait_for(_until(lambda: Path(f"{gate}.started").exists()), 30)
    gate.write_text("go")
    await studio.fake.wait_for_message(lambda m: m["id"] == str(message.id) and "finished" in text_of(m), timeout=30)
    history = studio.fake.message_history[str(message.id)]
    stamps = [entry["edited_timestamp"] for entry in history if entry.get("edited_timestamp")]
    assert len(stamps) >= 1
    assert len(history) <= 5, f"queued → running → progress → done must coalesce, got {len(history)} versions"


async def test_channel_and_role_limits_and_flood_guard(fake, config) -> None:
    limited = dataclasses.replace(config, discord=dataclasses.replace(
        config.discord, allowed_channel_ids=[424242], commands_per_minute=3))
    studio = await Studio(fake, limited).start()
    try:
        elsewhere = text_of(await ask(studio, ALICE, "lora list"))
        assert "only available in <#424242>" in elsewhere
        lab = fake.add_channel("lora-lab", channel_id=424242)
        answers = [text_of(await ask(studio, BOB, "lora list", channel_id=lab)) for _ in range(4)]
        assert all("Your LoRA projects" in a for a in answers[:3])
        assert "a lot of commands in one minute" in answers[3]
        moderator = text_of(await ask(studio, MOD, "lora list"))
        assert "Your LoRA projects" in moderator, "server managers are not held to the channel list"
    finally:
        await studio.stop()


async def _until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.02)
