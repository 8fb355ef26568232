"""FakeDiscord: a loopback Discord (REST + gateway) that a real discord.py bot connects to."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import secrets
import socket
import time
from typing import Any, Iterable

import yarl
from aiohttp import web
from discord.gateway import DiscordWebSocket
from discord.http import Route

from . import payloads
from .gateway import AUTHENTICATION_FAILED, GatewaySession, serve_gateway
from .guild import DEFAULT_BOT_PERMISSIONS, FakeGuild, premium_tier_for
from .interactions import (
    APPLICATION_COMMAND,
    AUTOCOMPLETE,
    ENTITY_SELECTS,
    MESSAGE_COMPONENT,
    MODAL_SUBMIT,
    InteractionRecord,
    Resolver,
    UserFile,
    build_options,
    find_command,
    find_component,
    modal_submission,
)
from .limits import SELECT_TYPES
from .messages import MessageStore, public
from .payloads import SnowflakeDict, Snowflakes
from .rest import MODAL, RestApi, make_middleware
from .waiting import Predicate, Waiters

log = logging.getLogger(__name__)

DEFAULT_GUILD_ID = 800_000_000_000_000_001
DEFAULT_APP_ID = 800_000_000_000_000_002
DEFAULT_CHANNEL_ID = 800_000_000_000_000_003
DEFAULT_OWNER_ID = 800_000_000_000_000_004
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
GUILDS_INTENT, GUILD_MEMBERS_INTENT, GUILD_MESSAGES_INTENT = 1 << 0, 1 << 1, 1 << 9
ACK_TIMER_SLACK = 0.05  # fire the deadline check just after the deadline, never just before


class FakeDiscord:
    """One guild, one bot application, and every message and interaction the bot handled.

    What tests read: ``messages`` / ``message_history`` / ``deleted_messages`` / ``files``; ``interactions``
    (id -> InteractionRecord); ``commands`` (the latest sync), ``guild_commands``, ``global_commands``;
    ``violations`` (Discord rules the bot broke: assert it is empty); ``errors`` (every error answer, for
    debugging); ``requests`` ("METHOD path" of every request).

    Clock: ``now()`` is ``time.monotonic()`` plus whatever ``advance_clock`` added; the acknowledgement
    deadline (``ack_timeout``, 3 s) and the interaction token lifetime (15 minutes) are measured on it.
    """

    def __init__(
        self,
        *,
        guild_id: int = DEFAULT_GUILD_ID,
        app_id: int = DEFAULT_APP_ID,
        bot_user_id: int | None = None,
        channel_id: int = DEFAULT_CHANNEL_ID,
        owner_id: int = DEFAULT_OWNER_ID,
        upload_limit: int = DEFAULT_UPLOAD_LIMIT,
        bot_permissions: int = DEFAULT_BOT_PERMISSIONS,
        ack_timeout: float = 3.0,
        token_lifetime: float = 15 * 60.0,
        bot_name: str = "lorabake",
    ) -> None:
        self.app_id = app_id
        # A bot user usually has its application's id.
        self.bot_user_id = bot_user_id or app_id
        self.channel_id = channel_id
        self.upload_limit = upload_limit
        self.ack_timeout = ack_timeout
        self.token_lifetime = token_lifetime
        self.token = payloads.bot_token(self.bot_user_id)
        self.bot_user = payloads.user(self.bot_user_id, bot_name, bot=True)
        self.owner = payloads.user(owner_id, "guild-owner")
        self._snowflake = Snowflakes()
        self.guild = FakeGuild(guild_id, owner_id, self._snowflake)
        self.guild.add_channel("general", channel_id)
        bot_role = self.guild.add_role(bot_name, bot_permissions, managed=True)
        self.guild.add_member(self.bot_user, [int(bot_role["id"])])
        self.store = MessageStore(self._snowflake, lambda: self.base_url, self.utcnow)
        self.interactions: SnowflakeDict = SnowflakeDict()
        self.global_commands: list[dict[str, Any]] = []
        self.guild_commands: list[dict[str, Any]] = []
        self.commands: list[dict[str, Any]] = []
        self.sync_count = 0
        self.violations: list[str] = []
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.sessions: list[GatewaySession] = []
        self.port: int | None = None
        self._by_token: dict[str, InteractionRecord] = {}
        self._clock_offset = 0.0
        self._session_waiters = Waiters()
        self._violation_waiters = Waiters()
        self._sync_waiters = Waiters()
        self._ack_timers: list[asyncio.TimerHandle] = []
        self._runner: web.AppRunner | None = None
        self._saved: tuple[str, yarl.URL] | None = None

    # -- views on the stored state ------------------------------------------------------------------

    @property
    def guild_id(self) -> int:
        return self.guild.id

    @property
    def messages(self) -> SnowflakeDict:
        """message id -> current message dict, for every message the bot created and has not deleted."""
        return self.store.messages

    @property
    def message_history(self) -> SnowflakeDict:
        """message id -> list of snapshots: as created, then after each edit."""
        return self.store.history

    @property
    def deleted_messages(self) -> SnowflakeDict:
        return self.store.deleted

    @property
    def files(self) -> dict[tuple[str, str], bytes]:
        """(message id, filename) -> bytes of every file the bot uploaded."""
        return self.store.files

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("FakeDiscord is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(middlewares=[make_middleware(self)])
        app.add_routes(RestApi(self).routes())
        app.router.add_get("/gateway", functools.partial(serve_gateway, self))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        """Stops serving and undoes ``patch_discord``. Close the bot first: a bot still connected gets
        close code 4004, on which discord.py stops instead of reconnecting to a dead port forever."""
        for handle in self._ack_timers:
            handle.cancel()
        for session in list(self.sessions):
            await session.close(AUTHENTICATION_FAILED, "fake discord stopped")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.unpatch_discord()

    def patch_discord(self) -> None:
        """Points every discord.py client in this process at the fake."""
        if self._saved is None:
            self._saved = (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
        Route.BASE = f"{self.base_url}/api/v10"
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)

    def unpatch_discord(self) -> None:
        if self._saved is not None:
            Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = self._saved
            self._saved = None

    # -- guild setup --------------------------------------------------------------------------------------

    def add_role(self, name: str, permissions: int = 0, role_id: int | None = None) -> int:
        role = self.guild.add_role(name, permissions, role_id)
        self._broadcast(GUILDS_INTENT, "GUILD_ROLE_CREATE", {"guild_id": str(self.guild.id), "role": role})
        return int(role["id"])

    def add_channel(self, name: str, channel_id: int | None = None) -> int:
        channel = self.guild.add_channel(name, channel_id)
        self._broadcast(GUILDS_INTENT, "CHANNEL_CREATE", channel)
        return int(channel["id"])

    def add_member(self, user_id: int, name: str, permissions: int = 0, roles: Iterable[int] = ()) -> None:
        """Adds a guild member. ``permissions`` become a role of their own, as Discord has no per-member grants."""
        roles = list(roles)
        if permissions:
            roles.append(self.add_role(f"{name} permissions", permissions))
        self.guild.add_member(payloads.user(user_id, name), roles)
        member = {**self.guild.member(user_id), "guild_id": str(self.guild.id)}
        self._broadcast(GUILD_MEMBERS_INTENT, "GUILD_MEMBER_ADD", member)

    # -- clock ------------------------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() + self._clock_offset

    def utcnow(self) -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=self._clock_offset)

    def advance_clock(self, seconds: float) -> None:
        """Moves the fake's clock on: interaction tokens expire and pending acknowledgements go late."""
        self._clock_offset += seconds
        for it in list(self.interactions.values()):
            self.check_ack_deadline(it)

    # -- waiting ------------------------------------------------------------------------------------------

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Until a bot session is connected that has identified and received READY and GUILD_CREATE."""
        await self._session_waiters.wait(
            lambda _: self._ready_session() is not None, [None], timeout, lambda: f"requests so far: {self.requests}"
        )

    async def wait_commands_synced(self, timeout: float = 10.0, *, syncs: int = 1) -> list[dict[str, Any]]:
        """The latest synced command list, once at least ``syncs`` syncs have happened."""
        await self._sync_waiters.wait(
            lambda count: count >= syncs, [self.sync_count], timeout, lambda: f"{self.sync_count} syncs so far"
        )
        return self.commands

    async def wait_for_message(self, predicate: Predicate, timeout: float = 10.0) -> dict[str, Any]:
        """The first message (existing, new or just edited) for which ``predicate(message)`` is true.

        A predicate that raises LookupError or TypeError (e.g. indexing missing embeds) counts as false.
        """
        return await self.store.waiters.wait(predicate, list(self.messages.values()), timeout, self._describe_messages)

    async def wait_for_violation(self, match: str | Predicate, timeout: float = 5.0) -> str:
        """The first violation containing ``match`` (a substring) or satisfying it (a predicate)."""
        predicate = (lambda text: match in text) if isinstance(match, str) else match
        return await self._violation_waiters.wait(
            predicate, list(self.violations), timeout, lambda: f"violations: {self.violations}"
        )

    def _describe_messages(self) -> str:
        recent = list(self.messages.values())[-5:]
        lines = [f"{m['id']}: {m['content'][:80]!r} embeds={len(m['embeds'])} flags={m['flags']}" for m in recent]
        return f"{len(self.messages)} messages, the last ones: {lines}; violations: {self.violations}"

    # -- what users do -------------------------------------------------------------------------------

    async def slash(
        self,
        user_id: int,
        command: str,
        options: dict[str, Any] | None = None,
        *,
        channel_id: int | None = None,
        attachments: dict[str, UserFile] | None = None,
    ) -> InteractionRecord:
        """Runs ``/command [subcommand ...]`` as ``user_id``; ``attachments`` fill ATTACHMENT options.

        User, role and channel options take ids. Raises what a Discord client would prevent: LookupError
        (unknown command or option), ValueError (missing required option, value outside the choices),
        PermissionError (``default_member_permissions`` the member lacks).
        """
        values = {**(options or {}), **(attachments or {})}
        return self._command_interaction(APPLICATION_COMMAND, user_id, command, values, channel_id, None)

    async def autocomplete(
        self,
        user_id: int,
        command: str,
        options: dict[str, Any],
        *,
        focused: str,
        channel_id: int | None = None,
        timeout: float = 5.0,
    ) -> list[dict[str, Any]]:
        """The choices the bot offers while ``user_id`` types ``options[focused]``."""
        if focused not in options:
            raise ValueError(f"the focused option {focused!r} needs a value in options")
        it = self._command_interaction(AUTOCOMPLETE, user_id, command, options, channel_id, focused)
        await it.acked(timeout)
        return it.response_data["choices"]

    async def click(
        self, user_id: int, message_id: int | str, custom_id: str, *, values: list[Any] | None = None
    ) -> InteractionRecord:
        """Clicks a button (or picks ``values`` in a select menu) on a message the bot sent."""
        message = self.messages.get(message_id)
        if message is None:
            raise LookupError(f"no message {message_id}")
        component = find_component(message["components"], custom_id)
        if component.get("disabled"):
            raise ValueError(f"{custom_id!r} is disabled; a user cannot click it")
        channel_id = int(message["channel_id"])
        resolver = Resolver(self.guild, self.store, channel_id, user_id)
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component["type"]}
        if "id" in component:
            data["id"] = component["id"]
        if component["type"] in SELECT_TYPES:
            entity = ENTITY_SELECTS.get(component["type"])
            offered = [option["value"] for option in component.get("options") or []]
            if entity is None and any(value not in offered for value in values or []):
                raise ValueError(f"{custom_id!r} only offers {offered}")
            data["values"] = [resolver.entity(entity, int(v)) if entity else str(v) for v in values or []]
            if resolver.data:
                data["resolved"] = resolver.data
        payload = self._interaction(MESSAGE_COMPONENT, user_id, channel_id, data, message=public(message))
        return self._dispatch_interaction(payload, f"click {custom_id!r}")

    async def submit_modal(
        self, user_id: int, custom_id: str, values: dict[str, Any] | None = None
    ) -> InteractionRecord:
        """Submits the modal ``custom_id`` the bot last showed ``user_id``; see ``modal_submission`` for values."""
        shown = next(
            (
                it
                for it in reversed(self.interactions.values())
                if it.response_type == MODAL and it.user_id == user_id and it.response_data["custom_id"] == custom_id
            ),
            None,
        )
        if shown is None:
            raise LookupError(f"the bot never showed modal {custom_id!r} to user {user_id}")
        channel_id = int(shown.payload["channel_id"])
        resolver = Resolver(self.guild, self.store, channel_id, user_id)
        components = modal_submission(shown.response_data, values or {}, resolver)
        data: dict[str, Any] = {"custom_id": custom_id, "components": components}
        if resolver.data:
            data["resolved"] = resolver.data
        extra = {}
        if shown.source_message_id and shown.source_message_id in self.messages:
            # A modal opened from a component carries that component's message, so the bot may edit it (type 7).
            extra["message"] = public(self.messages[shown.source_message_id])
        payload = self._interaction(MODAL_SUBMIT, user_id, channel_id, data, **extra)
        return self._dispatch_interaction(payload, f"modal {custom_id!r}")

    def delete_message(self, message_id: int | str) -> None:
        """A moderator deletes one of the bot's messages; later edits by the bot get 404 Unknown Message."""
        message = self.store.delete(message_id)
        self._broadcast(
            GUILD_MESSAGES_INTENT,
            "MESSAGE_DELETE",
            {"id": message["id"], "channel_id": message["channel_id"], "guild_id": str(self.guild.id)},
        )

    # -- used by the REST and gateway layers -------------------------------------------------------------

    def violate(self, text: str) -> None:
        log.warning("Discord limit violated: %s", text)
        self.violations.append(text)
        self._violation_waiters.notify(text)

    def check_ack_deadline(self, it: InteractionRecord) -> bool:
        """Whether ``it`` missed its acknowledgement deadline; records the violation the first time."""
        if it.response_type is None and not it.expired and self.now() - it.dispatched_at > self.ack_timeout:
            it.expired = True
            if it.rejection is None:  # a refused response already explains the failure
                self.violate(f"{it.label}: no initial response within {self.ack_timeout} s")
            it.refuse(f"not acknowledged within {self.ack_timeout} s")
        return it.expired

    def interaction_by_token(self, token: str) -> InteractionRecord | None:
        return self._by_token.get(token)

    def application(self) -> dict[str, Any]:
        return {
            "id": str(self.app_id),
            "name": self.bot_user["username"],
            "description": "",
            "icon": None,
            "bot_public": False,
            "bot_require_code_grant": False,
            "owner": self.owner,
            "team": None,
            "verify_key": "0" * 64,
            "flags": 0,
            "summary": "",
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "approximate_guild_count": 1,
            "bot": self.bot_user,
        }

    def record_sync(self, commands: list[dict[str, Any]], *, guild_id: str | None) -> list[dict[str, Any]]:
        """Stores a bulk overwrite; a command keeps its id across syncs, as on Discord."""
        scope = self.guild_commands if guild_id else self.global_commands
        previous = {(command["type"], command["name"]): command["id"] for command in scope}
        synced = []
        for command in commands:
            kind = command.get("type", 1)
            entry = {
                "description": "",  # Discord answers context-menu commands with an empty description
                **command,
                "type": kind,
                "id": previous.get((kind, command["name"])) or self._snowflake(),
                "application_id": str(self.app_id),
                "version": self._snowflake(),
            }
            if guild_id:
                entry["guild_id"] = guild_id
            synced.append(entry)
        if guild_id:
            self.guild_commands = synced
        else:
            self.global_commands = synced
        self.commands = synced
        self.sync_count += 1
        self._sync_waiters.notify(self.sync_count)
        return synced

    def identify_events(self, session: GatewaySession) -> list[tuple[str, dict[str, Any]]]:
        ready = {
            "v": 10,
            "user": {**self.bot_user, "verified": True, "mfa_enabled": False},
            "guilds": [{"id": str(self.guild.id), "unavailable": True}],
            "session_id": session.session_id,
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.app_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "geo_ordered_rtc_regions": [],
        }
        guild = self.guild.create_payload(
            bot_user_id=self.bot_user_id,
            premium_tier=premium_tier_for(self.upload_limit),
            with_members=bool(session.intents & GUILD_MEMBERS_INTENT),
        )
        return [("READY", ready), ("GUILD_CREATE", guild)]

    def session_changed(self) -> None:
        self._session_waiters.notify(None)

    # -- internals ----------------------------------------------------------------------------------------

    def _ready_session(self) -> GatewaySession | None:
        """The newest connected session that has identified (a restarted bot's old one may linger)."""
        return next((s for s in reversed(self.sessions) if s.ready and s.open), None)

    def _broadcast(self, intent: int, event: str, data: dict[str, Any]) -> None:
        for session in self.sessions:
            if session.ready and session.open and session.intents & intent:
                session.dispatch(event, data)

    def post_user_message(self, user_id: int, content: str = "", *, files: Iterable[UserFile] = (),
                          channel_id: int | None = None) -> dict[str, Any]:
        """A member posts a message, with attachments served like Discord's CDN serves them."""
        channel_id = channel_id or self.channel_id
        attachments = [self.store.host(channel_id, *file) for file in files]
        message = self.store.skeleton(channel_id, self.guild.users[user_id], content=content, attachments=attachments)
        return self.store.commit(message, [])

    async def message_command(self, user_id: int, name: str, message_id: int | str) -> InteractionRecord:
        """Runs "Apps → name" on a message: a MESSAGE context-menu command (type 3) as Discord sends it."""
        message = self.messages.get(message_id)
        if message is None:
            raise LookupError(f"no message {message_id}")
        scoped = [(c, True) for c in self.guild_commands] + [(c, False) for c in self.global_commands]
        found = next(((c, g) for c, g in scoped if c.get("type") == 3 and c["name"] == name), None)
        if found is None:
            raise LookupError(f"no message command {name!r} was synced")
        definition, guild_scoped = found
        data: dict[str, Any] = {"id": definition["id"], "name": name, "type": 3, "target_id": message["id"],
                                "resolved": {"messages": {message["id"]: public(message)}}}
        if guild_scoped:
            data["guild_id"] = str(self.guild.id)
        payload = self._interaction(APPLICATION_COMMAND, user_id, int(message["channel_id"]), data)
        return self._dispatch_interaction(payload, f"Apps → {name}")

    async def forged_click(self, user_id: int, message_id: int | str, custom_id: str) -> InteractionRecord:
        """A click as a modified client can send it: any custom_id, on any message the user can see.
        Bots must treat custom_ids as client data; this is how tests prove they do."""
        message = self.messages.get(message_id)
        if message is None:
            raise LookupError(f"no message {message_id}")
        data = {"custom_id": custom_id, "component_type": 2}
        # discord.py only dispatches a custom_id that the message carries, so the forgery carries it too.
        forged = {**public(message), "components": [
            {"type": 1, "components": [{"type": 2, "style": 4, "label": "x", "custom_id": custom_id}]}]}
        payload = self._interaction(MESSAGE_COMPONENT, user_id, int(message["channel_id"]), data, message=forged)
        return self._dispatch_interaction(payload, f"forged click {custom_id!r}")

    def _interaction(
        self, kind: int, user_id: int, channel_id: int, data: dict[str, Any], **extra: Any
    ) -> dict[str, Any]:
        if user_id not in self.guild.users:
            raise LookupError(f"user {user_id} is not a member; call fake.add_member first")
        channel = self.guild.channel(channel_id)
        return {
            "id": self._snowflake(),
            "application_id": str(self.app_id),
            "type": kind,
            "data": data,
            "guild_id": str(self.guild.id),
            "guild": {"id": str(self.guild.id), "locale": "en-US", "features": []},
            "channel_id": channel["id"],
            "channel": {**channel, "permissions": str(self.guild.permissions(user_id))},
            "member": self.guild.member(user_id, with_permissions=True),
            "token": secrets.token_urlsafe(64),
            "version": 1,
            "app_permissions": str(self.guild.permissions(self.bot_user_id)),
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "entitlement_sku_ids": [],
            "authorizing_integration_owners": {"0": str(self.guild.id)},
            "context": 0,
            # discord.py's Interaction reads this key unconditionally.
            "attachment_size_limit": self.upload_limit,
            **extra,
        }

    def _command_interaction(
        self,
        kind: int,
        user_id: int,
        command: str,
        values: dict[str, Any],
        channel_id: int | None,
        focused: str | None,
    ) -> InteractionRecord:
        name, *path = command.strip().lstrip("/").split()
        guild_scoped = any(c["type"] == 1 and c["name"] == name for c in self.guild_commands)
        definition = find_command(self.guild_commands if guild_scoped else self.global_commands, name)
        required = definition.get("default_member_permissions")
        if not self.guild.may_use(user_id, required):
            raise PermissionError(f"Discord hides /{name} from user {user_id} (it needs permissions {required})")
        channel_id = channel_id or self.channel_id
        resolver = Resolver(self.guild, self.store, channel_id, user_id)
        data: dict[str, Any] = {
            "id": definition["id"],
            "name": name,
            "type": 1,
            "options": build_options(definition.get("options") or [], path, values, resolver, focused),
        }
        if guild_scoped:
            # discord.py looks guild commands up by this key; without it only global commands match.
            data["guild_id"] = str(self.guild.id)
        if resolver.data:
            data["resolved"] = resolver.data
        label = "/" + " ".join([name, *path]) + (" (autocomplete)" if kind == AUTOCOMPLETE else "")
        return self._dispatch_interaction(self._interaction(kind, user_id, channel_id, data), label)

    def _dispatch_interaction(self, payload: dict[str, Any], label: str) -> InteractionRecord:
        session = self._ready_session()
        if session is None:
            raise RuntimeError("no bot is connected; start it and await fake.wait_ready() first")
        it = InteractionRecord(payload, label, self.now(), self.store)
        self.interactions[it.id] = it
        self._by_token[it.token] = it
        session.dispatch("INTERACTION_CREATE", payload)
        loop = asyncio.get_running_loop()
        self._ack_timers.append(loop.call_later(self.ack_timeout + ACK_TIMER_SLACK, self.check_ack_deadline, it))
        return it
