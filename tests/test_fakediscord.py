"""The Discord fake, driven by a real discord.py bot defined here."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import discord
import pytest
from discord import app_commands
from discord.ext import commands
from discord.http import Route

from tests.fakediscord import FakeDiscord, InteractionFailed, limits, running_bot

ALICE = 100_000_000_000_000_001
BOB = 100_000_000_000_000_002
CAROL = 100_000_000_000_000_003
UPLOAD_LIMIT = 64 * 1024
FRUITS = ["apple", "apricot", "banana", "cherry"]


# Raw component payloads, for limits discord.py would refuse to build.
def row(*items: dict[str, Any]) -> dict[str, Any]:
    return {"type": 1, "components": list(items)}


def button(custom_id: str | None = "b", **extra: Any) -> dict[str, Any]:
    return {"type": 2, "style": 1, "label": "ok", "custom_id": custom_id, **extra}


SELECT = {"type": 3, "custom_id": "s", "options": [{"label": "a", "value": "a"}]}


class CancelButton(discord.ui.DynamicItem[discord.ui.Button], template=r"job:(?P<job>\d+):cancel"):
    """A button that survives restarts: its state lives in the custom_id."""

    def __init__(self, job: int) -> None:
        super().__init__(discord.ui.Button(label="Cancel", custom_id=f"job:{job}:cancel"))
        self.job = job

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item, match: Any) -> CancelButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.edit_message(content=f"job {self.job} cancelled by {interaction.user.id}", view=None)


class RenameModal(discord.ui.Modal, title="Rename"):
    name = discord.ui.Label(text="New name", component=discord.ui.TextInput(custom_id="name"))
    pictures = discord.ui.Label(text="Pictures", component=discord.ui.FileUpload(custom_id="pictures", required=False))

    async def on_submit(self, interaction: discord.Interaction) -> None:
        files = self.pictures.component.values
        sizes = [len(await attachment.read()) for attachment in files]
        await interaction.response.send_message(f"renamed to {self.name.component.value}; file sizes {sizes}")


class TooLongTitleModal(discord.ui.Modal, title="x" * 46):
    name = discord.ui.TextInput(label="Name", custom_id="name")


class PingBot(commands.Bot):
    def __init__(self, guild_id: int, intents: discord.Intents | None = None) -> None:
        # guild_ready_timeout: discord.py waits that long after the last GUILD_CREATE before on_ready (2 s).
        super().__init__(command_prefix="!", intents=intents or discord.Intents.default(), guild_ready_timeout=0.05)
        self.guild = discord.Object(guild_id)
        self.resume_later = asyncio.Event()
        self.interactions: list[discord.Interaction] = []
        self.command_errors: asyncio.Queue[Exception] = asyncio.Queue()
        self.deleted: asyncio.Queue[int] = asyncio.Queue()

    async def setup_hook(self) -> None:
        self.add_dynamic_items(CancelButton)
        self.tree.add_command(build_group(self), guild=self.guild)
        self.tree.add_command(admin, guild=self.guild)
        self.tree.error(self.record_error)
        await self.tree.sync(guild=self.guild)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        self.interactions.append(interaction)

    async def on_raw_message_delete(self, event: discord.RawMessageDeleteEvent) -> None:
        self.deleted.put_nowait(event.message_id)

    async def record_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        self.command_errors.put_nowait(error.__cause__ or error)


@app_commands.command(description="Only for server managers")
@app_commands.default_permissions(manage_guild=True)
async def admin(interaction: discord.Interaction) -> None:
    await interaction.response.send_message("admin ok")


def build_group(bot: PingBot) -> app_commands.Group:
    group = app_commands.Group(name="ping", description="Exercises the Discord fake")

    @group.command(description="Replies, echoing an attached file")
    async def say(interaction: discord.Interaction, text: str, file: discord.Attachment | None = None) -> None:
        if file is None:
            await interaction.response.send_message(f"pong {text}")
            return
        data = await file.read()
        echo = discord.File(io.BytesIO(data), filename="echo.bin")
        await interaction.response.send_message(f"pong {text}: {file.filename} {len(data)} bytes", file=echo)

    @say.autocomplete("text")
    async def say_text(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        if current == "many":
            return [app_commands.Choice(name=f"choice {n}", value=str(n)) for n in range(26)]
        return [app_commands.Choice(name=fruit, value=fruit) for fruit in FRUITS if fruit.startswith(current)]

    @group.command(description="Defers, edits the original, then follows up")
    async def slow(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        await interaction.edit_original_response(content="done")
        await interaction.followup.send("extra", ephemeral=True)

    @group.command(description="Defers ephemerally, then answers with one followup")
    async def think(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True, ephemeral=True)
        await interaction.followup.send("result")

    @group.command(description="Posts a status message and edits it")
    async def post(interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True)
        status = await interaction.channel.send("status 0%")
        await status.edit(content="status 100%")
        await interaction.followup.send(f"posted {status.id}")

    @group.command(description="Answers now, finishes after the test moves the clock")
    async def later(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("working")
        status = await interaction.channel.send("status: queued")
        await bot.resume_later.wait()
        await status.edit(content="status: done")
        await interaction.edit_original_response(content="done")

    @group.command(description="Starts a job with a persistent cancel button")
    async def job(interaction: discord.Interaction, number: int) -> None:
        view = discord.ui.View(timeout=None)
        view.add_item(CancelButton(number))
        options = [discord.SelectOption(label=label) for label in ("low", "high")]
        priority = discord.ui.Select(custom_id="priority", options=options)

        async def set_priority(select_interaction: discord.Interaction) -> None:
            await select_interaction.response.edit_message(content=f"job {number} priority {priority.values[0]}")

        priority.callback = set_priority
        view.add_item(priority)
        await interaction.response.send_message(f"job {number} running", view=view)

    @group.command(description="Describes a member, a role and a channel")
    async def whois(
        interaction: discord.Interaction, member: discord.Member, role: discord.Role, channel: discord.TextChannel
    ) -> None:
        admin = member.guild_permissions.manage_guild
        await interaction.response.send_message(f"{member.name} manage_guild={admin} {role.name} #{channel.name}")

    @group.command(description="Opens a modal")
    async def rename(interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(RenameModal())

    @group.command(description="Breaks a limit on purpose")
    @app_commands.choices(
        what=[
            app_commands.Choice(name=n, value=n)
            for n in ("long", "embed", "rows", "twice", "upload", "modal", "button", "ephemeral")
        ]
    )
    async def bad(interaction: discord.Interaction, what: str, late: float = 0.0) -> None:
        await asyncio.sleep(late)
        http = interaction.client.http
        if what == "long":
            await interaction.response.send_message("x" * 2001)
        elif what == "embed":
            await interaction.response.send_message(embed=discord.Embed(description="x" * 4097))
        elif what == "rows":
            # discord.py's View refuses a 6th row, so send the components raw.
            rows = [row(button(f"r{n}")) for n in range(6)]
            route = Route("POST", "/channels/{channel_id}/messages", channel_id=interaction.channel_id)
            try:
                await http.request(route, json={"content": "rows", "components": rows})
            except discord.HTTPException as error:
                await interaction.response.send_message(f"refused {error.code}")
        elif what == "twice":
            await interaction.response.send_message("one")
            # discord.py refuses a second response itself, so post it raw.
            route = Route("POST", "/interactions/{i}/{token}/callback", i=interaction.id, token=interaction.token)
            try:
                await http.request(route, json={"type": 4, "data": {"content": "two"}})
            except discord.HTTPException as error:
                await interaction.followup.send(f"refused {error.code}")
        elif what == "upload":
            await interaction.response.send_message(file=discord.File(io.BytesIO(b"x" * (UPLOAD_LIMIT + 1)), "big.bin"))
        elif what == "modal":
            await interaction.response.send_modal(TooLongTitleModal())
        elif what == "button":
            view = discord.ui.View()
            view.add_item(discord.ui.Button(label="b", custom_id="c" * 101))
            await interaction.response.send_message("button", view=view)
        elif what == "ephemeral":
            await interaction.response.send_message("secret", ephemeral=True)
            secret = await interaction.original_response()
            try:
                await interaction.channel.get_partial_message(secret.id).edit(content="still secret")
            except discord.NotFound as error:
                await interaction.followup.send(f"refused {error.code}")

    return group


@pytest.fixture
async def fake() -> Any:
    fake = FakeDiscord(upload_limit=UPLOAD_LIMIT)
    fake.add_member(ALICE, "alice")
    fake.add_member(BOB, "bob", permissions=discord.Permissions(manage_guild=True).value)
    await fake.start()
    fake.patch_discord()
    yield fake
    await fake.stop()
    assert fake.violations == [], "tests that expect violations take them out of the list"


@pytest.fixture
async def bot(fake: FakeDiscord) -> Any:
    bot = PingBot(fake.guild_id)
    async with running_bot(fake, bot):
        await fake.wait_commands_synced()
        yield bot


async def expect_violation(fake: FakeDiscord, text: str) -> str:
    violation = await fake.wait_for_violation(text)
    fake.violations.remove(violation)
    return violation


async def test_login_ready_and_command_sync(fake: FakeDiscord, bot: PingBot) -> None:
    ping, _ = await fake.wait_commands_synced()
    assert ping["name"] == "ping" and ping["guild_id"] == str(fake.guild_id)
    assert {option["name"] for option in ping["options"]} >= {"say", "slow", "job", "rename"}
    assert bot.user.id == fake.bot_user_id and bot.application_id == fake.app_id
    assert "GET /api/v10/oauth2/applications/@me" in fake.requests
    guild = bot.get_guild(fake.guild_id)
    assert guild is not None and guild.get_channel(fake.channel_id).name == "general"
    assert guild.me.guild_permissions.attach_files


async def test_slash_response_carries_member_permissions(fake: FakeDiscord, bot: PingBot) -> None:
    it = await (await fake.slash(BOB, "ping say", {"text": "hi"})).acked()
    assert it.response_type == 4 and it.original["content"] == "pong hi" and not it.ephemeral
    assert it.original["interaction_id"] == it.id and it.original["type"] == 20
    (interaction,) = bot.interactions
    assert interaction.permissions.manage_guild and interaction.user.guild_permissions.manage_guild
    assert interaction.filesize_limit == UPLOAD_LIMIT and interaction.channel.id == fake.channel_id


async def test_default_member_permissions_hide_commands(fake: FakeDiscord, bot: PingBot) -> None:
    with pytest.raises(PermissionError):
        await fake.slash(ALICE, "admin")
    assert (await (await fake.slash(BOB, "admin")).wait_original())["content"] == "admin ok"


async def test_attachment_download_and_upload(fake: FakeDiscord, bot: PingBot) -> None:
    data = bytes(range(256)) * 10
    it = await fake.slash(ALICE, "/ping say", {"text": "file"}, attachments={"file": ("a.png", data, "image/png")})
    message = await it.wait_original()
    assert message["content"] == "pong file: a.png 2560 bytes"
    (attachment,) = message["attachments"]
    assert attachment["filename"] == "echo.bin" and attachment["size"] == len(data)
    assert fake.files[(message["id"], "echo.bin")] == data


async def test_defer_edit_original_then_followup(fake: FakeDiscord, bot: PingBot) -> None:
    it = await (await fake.slash(ALICE, "ping slow")).acked()
    assert it.response_type == 5
    await it.wait_original(lambda m: m["content"] == "done")
    followup = await it.wait_followup()
    assert followup["content"] == "extra" and followup["flags"] & 64 and followup["id"] != it.original["id"]
    assert [snapshot["content"] for snapshot in fake.message_history[it.original["id"]]] == ["", "done"]


async def test_first_followup_replaces_thinking_message(fake: FakeDiscord, bot: PingBot) -> None:
    it = await fake.slash(ALICE, "ping think")
    followup = await it.wait_followup()
    assert followup["id"] == it.original["id"] and followup["content"] == "result"
    assert it.ephemeral and not followup["flags"] & 128


async def test_autocomplete(fake: FakeDiscord, bot: PingBot) -> None:
    choices = await fake.autocomplete(ALICE, "ping say", {"text": "ap"}, focused="text")
    assert [choice["name"] for choice in choices] == ["apple", "apricot"]


async def test_persistent_button_click_edits_message(fake: FakeDiscord, bot: PingBot) -> None:
    it = await fake.slash(ALICE, "ping job", {"number": 7})
    message = await it.wait_original()
    assert message["components"][0]["components"][0]["custom_id"] == "job:7:cancel"
    click = await (await fake.click(BOB, message["id"], "job:7:cancel")).acked()
    assert click.response_type == 7
    edited = fake.messages[message["id"]]
    assert edited["content"] == f"job 7 cancelled by {BOB}" and edited["components"] == []


async def test_button_survives_a_restart(fake: FakeDiscord, bot: PingBot) -> None:
    message = await (await fake.slash(ALICE, "ping job", {"number": 8})).wait_original()
    await bot.close()
    async with running_bot(fake, PingBot(fake.guild_id)):
        await fake.wait_commands_synced(syncs=2)
        await (await fake.click(ALICE, message["id"], "job:8:cancel")).acked()
    assert fake.messages[message["id"]]["content"] == f"job 8 cancelled by {ALICE}"


async def test_select_menu_click(fake: FakeDiscord, bot: PingBot) -> None:
    message = await (await fake.slash(ALICE, "ping job", {"number": 3})).wait_original()
    with pytest.raises(ValueError, match="only offers"):
        await fake.click(ALICE, message["id"], "priority", values=["urgent"])
    await (await fake.click(ALICE, message["id"], "priority", values=["high"])).acked()
    assert fake.messages[message["id"]]["content"] == "job 3 priority high"


async def test_member_role_and_channel_options(fake: FakeDiscord, bot: PingBot) -> None:
    # Added after READY: the bot learns of them through GUILD_ROLE_CREATE / CHANNEL_CREATE.
    role_id = fake.add_role("trainers")
    channel_id = fake.add_channel("renders")
    it = await fake.slash(ALICE, "ping whois", {"member": BOB, "role": role_id, "channel": channel_id})
    assert (await it.wait_original())["content"] == "bob manage_guild=True trainers #renders"


async def test_members_intent_gets_members_and_chunks(fake: FakeDiscord) -> None:
    intents = discord.Intents.default()
    intents.members = True
    async with running_bot(fake, PingBot(fake.guild_id, intents)) as bot:
        await asyncio.wait_for(bot.wait_until_ready(), 5)
        guild = bot.get_guild(fake.guild_id)
        assert {member.id for member in guild.members} == {fake.bot_user_id, ALICE, BOB}
        fake.add_member(CAROL, "carol")
        (carol,) = await guild.query_members(user_ids=[CAROL])
        assert carol.name == "carol" and guild.get_member(CAROL) is not None


async def test_user_deletes_a_message(fake: FakeDiscord, bot: PingBot) -> None:
    it = await fake.slash(ALICE, "ping say", {"text": "bye"})
    message = await it.wait_original()
    fake.delete_message(message["id"])
    assert await asyncio.wait_for(bot.deleted.get(), 5) == int(message["id"])
    assert it.original is None and fake.deleted_messages[message["id"]]["content"] == "pong bye"


async def test_fetch_endpoints(fake: FakeDiscord, bot: PingBot) -> None:
    assert (await bot.fetch_user(ALICE)).name == "alice"
    assert (await bot.get_guild(fake.guild_id).fetch_member(BOB)).guild_permissions.manage_guild
    channel = await bot.fetch_channel(fake.channel_id)
    async with channel.typing():
        assert channel.name == "general"
    ping, admin_command = await bot.tree.fetch_commands(guild=bot.guild)
    assert [ping.id, admin_command.id] == [int(command["id"]) for command in fake.guild_commands]


async def test_unimplemented_routes_are_violations(fake: FakeDiscord, bot: PingBot) -> None:
    with pytest.raises(discord.NotFound):
        await bot.http.request(Route("GET", "/guilds/{guild_id}/roles", guild_id=fake.guild_id))
    assert "GET /api/v10/guilds/" in await expect_violation(fake, "does not implement")


async def test_wrong_token_is_refused(fake: FakeDiscord) -> None:
    bot = PingBot(fake.guild_id)
    with pytest.raises(discord.LoginFailure):
        await bot.login("not.the.token")
    await bot.close()


async def test_stopping_the_fake_stops_a_connected_bot(fake: FakeDiscord) -> None:
    bot = PingBot(fake.guild_id)
    task = asyncio.create_task(bot.start(fake.token))
    await fake.wait_ready()
    await fake.stop()
    with pytest.raises(discord.ConnectionClosed) as closed:
        await asyncio.wait_for(task, 5)
    assert closed.value.code == 4004 and bot.is_closed()


async def test_modal_submit_with_file_upload(fake: FakeDiscord, bot: PingBot) -> None:
    it = await (await fake.slash(ALICE, "ping rename")).acked()
    assert it.response_type == 9 and it.response_data["title"] == "Rename"
    with pytest.raises(ValueError, match="required"):
        await fake.submit_modal(ALICE, it.response_data["custom_id"], {})
    submitted = await fake.submit_modal(
        ALICE, it.response_data["custom_id"], {"name": "Xing", "pictures": [("p.png", b"12345"), ("q.png", b"1")]}
    )
    message = await submitted.wait_original()
    assert message["content"] == "renamed to Xing; file sizes [5, 1]"


async def test_channel_message_send_and_edit(fake: FakeDiscord, bot: PingBot) -> None:
    it = await fake.slash(ALICE, "ping post")
    status = await fake.wait_for_message(lambda m: m["content"] == "status 100%")
    assert status["channel_id"] == str(fake.channel_id) and status["edited_timestamp"] is not None
    assert "interaction_id" not in status and len(fake.message_history[status["id"]]) == 2
    assert (await it.wait_followup())["content"] == f"posted {status['id']}"


async def test_interaction_token_expires_but_channel_edits_do_not(fake: FakeDiscord, bot: PingBot) -> None:
    await fake.slash(ALICE, "ping later")
    await fake.wait_for_message(lambda m: m["content"] == "status: queued")
    fake.advance_clock(16 * 60)
    bot.resume_later.set()
    await fake.wait_for_message(lambda m: m["content"] == "status: done")
    assert "lives 900 s" in await expect_violation(fake, "interaction token used")


@pytest.mark.parametrize(
    ("what", "violation"),
    [
        ("long", "content: 2001 characters (max 2000)"),
        ("embed", "embeds.0.description: 4097 characters"),
        ("twice", "second initial response"),
        ("upload", "upload limit 65536"),
        ("modal", "data.title"),
        ("button", "custom_id must be 1 to 100 characters"),
    ],
)
async def test_limits_refuse_the_initial_response(fake: FakeDiscord, bot: PingBot, what: str, violation: str) -> None:
    it = await fake.slash(ALICE, "ping bad", {"what": what})
    if what == "twice":
        assert (await it.wait_followup())["content"] == "refused 40060"
    else:
        with pytest.raises(InteractionFailed):
            await it.acked()
    await expect_violation(fake, violation)


async def test_six_action_rows_are_refused(fake: FakeDiscord, bot: PingBot) -> None:
    it = await fake.slash(ALICE, "ping bad", {"what": "rows"})
    assert (await it.wait_original())["content"] == "refused 50035"
    await expect_violation(fake, "6 action rows (max 5)")


async def test_ephemeral_messages_are_out_of_reach_of_channel_endpoints(fake: FakeDiscord, bot: PingBot) -> None:
    it = await fake.slash(ALICE, "ping bad", {"what": "ephemeral"})
    assert (await it.wait_followup())["content"] == "refused 10008" and it.ephemeral
    await expect_violation(fake, "reachable only through the interaction token")


async def test_late_ack(fake: FakeDiscord, bot: PingBot) -> None:
    fake.ack_timeout = 0.2
    it = await fake.slash(ALICE, "ping bad", {"what": "long", "late": 0.4})
    await expect_violation(fake, "no initial response within 0.2 s")
    with pytest.raises(InteractionFailed, match="not acknowledged"):
        await it.acked()
    error = await asyncio.wait_for(bot.command_errors.get(), 5)
    assert isinstance(error, discord.NotFound) and error.code == 10062
    assert any("10062" in answer for answer in fake.errors)


async def test_too_many_autocomplete_choices(fake: FakeDiscord, bot: PingBot) -> None:
    with pytest.raises(InteractionFailed):
        await fake.autocomplete(ALICE, "ping say", {"text": "many"}, focused="text")
    await expect_violation(fake, "26 choices (max 25)")


async def test_invalid_command_sync(fake: FakeDiscord, bot: PingBot) -> None:
    options = [{"type": 3, "name": f"o{n}", "description": "d"} for n in range(26)]
    bad = [{"type": 1, "name": "Bad", "description": "", "options": options}]
    with pytest.raises(discord.HTTPException) as raised:
        await bot.http.bulk_upsert_guild_commands(fake.app_id, fake.guild_id, payload=bad)
    assert raised.value.code == 50035
    violation = await expect_violation(fake, "26 options (max 25)")
    assert "0.name" in violation and "0.description" in violation


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"embeds": [{"title": "t"}] * 11}, "11 embeds"),
        ({"embeds": [{"title": "x" * 257}]}, "embeds.0.title"),
        ({"embeds": [{"fields": [{"name": "n", "value": "v"}] * 26}]}, "26 fields"),
        ({"embeds": [{"fields": [{"name": "n" * 257, "value": "v"}]}]}, "fields.0.name"),
        ({"embeds": [{"fields": [{"name": "n", "value": "v" * 1025}]}]}, "fields.0.value"),
        ({"embeds": [{"title": "t", "footer": {"text": "f" * 2049}}]}, "footer.text"),
        ({"embeds": [{"title": "t", "author": {"name": "a" * 257}}]}, "author.name"),
        ({"embeds": [{"description": "d" * 4000}, {"description": "d" * 2001}]}, "6001 characters across"),
        ({"components": [row(*(button(f"b{n}") for n in range(6)))]}, "6 components in one row"),
        ({"components": [row(SELECT, button())]}, "alone in its action row"),
        ({"components": [row({**SELECT, "options": [{"label": "a", "value": "a"}] * 26})]}, "26 options"),
        ({"components": [row(button(None))]}, "required for non-link buttons"),
        ({"components": [row(button(label="l" * 81))]}, "label: 81 characters"),
        ({"components": [row(button("same")), row(button("same"))]}, "duplicate custom_id"),
        ({"content": "", "attachments": []}, "empty message"),
        ({"flags": 1 << 15, "components": [{"type": 10, "content": "t"}]}, "cannot have content"),
        ({"content": "", "flags": 1 << 15, "components": [{"type": 10, "content": "t"}] * 41}, "41 components"),
    ],
)
def test_message_limits(message: dict[str, Any], expected: str) -> None:
    problems = limits.check_message({"content": "c", **message})
    assert any(expected in f"{path}: {text}" or expected in text for path, text in problems), problems


def test_limits_accept_a_full_but_valid_message() -> None:
    rows = [row(*(button(f"b{r}{n}") for n in range(5))) for r in range(5)]
    embeds = [{"title": "t" * 256, "description": "d" * 300, "fields": [{"name": "n", "value": "v"}] * 25}]
    assert limits.check_message({"content": "c" * 2000, "embeds": embeds, "components": rows}) == []
    assert limits.check_autocomplete({"choices": [{"name": "n", "value": "v"}] * 25}) == []
    text_input = row({"type": 4, "custom_id": "i", "label": "l"})
    modal = {"title": "t" * 45, "custom_id": "m", "components": [text_input]}
    assert limits.check_modal(modal) == []
    assert limits.check_modal({**modal, "components": [text_input] * 6})


def test_command_limits() -> None:
    required = {"type": 3, "name": "a", "description": "d", "required": True}
    good = {"type": 1, "name": "lora", "description": "d", "options": [required]}
    assert limits.check_commands([good]) == []
    optional_first = {**good, "name": "other", "options": [{**required, "name": "b", "required": False}, required]}
    problems = " ".join(text for _, text in limits.check_commands([good, good, optional_first]))
    assert "duplicate command name" in problems and "required options must come before" in problems
