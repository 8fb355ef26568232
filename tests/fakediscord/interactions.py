"""Interactions the fake injects, and what the bot answered to each of them."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Iterable

from .limits import walk_components
from .messages import EPHEMERAL, MessageStore
from .waiting import Predicate

if TYPE_CHECKING:
    from .guild import FakeGuild

APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 2, 3, 4, 5
STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, MENTIONABLE, NUMBER, ATTACHMENT = 3, 4, 5, 6, 7, 8, 9, 10, 11
SUBCOMMAND_TYPES = (1, 2)
ENTITY_SELECTS = {5: USER, 6: ROLE, 7: MENTIONABLE, 8: CHANNEL}

# A file a user attaches: (filename, bytes) or (filename, bytes, content type).
UserFile = tuple[str, bytes] | tuple[str, bytes, str]


class InteractionFailed(Exception):
    """The interaction got no accepted initial response: it was refused (a limit, a wrong type) or too late."""


class InteractionRecord:
    """One injected interaction and the bot's answers to it."""

    def __init__(self, payload: dict[str, Any], label: str, dispatched_at: float, store: MessageStore) -> None:
        self.payload = payload
        self.id: str = payload["id"]
        self.token: str = payload["token"]
        self.type: int = payload["type"]
        self.user_id = int(payload["member"]["user"]["id"])
        self.label = label
        self.dispatched_at = dispatched_at
        self.response_type: int | None = None
        self.response_data: dict[str, Any] | None = None
        self.rejection: str | None = None
        self.expired = False
        self.original_id: str | None = None
        self.followup_ids: list[str] = []
        self._store = store
        self._settled = asyncio.Event()

    def __repr__(self) -> str:
        return f"<Interaction {self.label} id={self.id} response_type={self.response_type}>"

    @property
    def source_message_id(self) -> str | None:
        """The message a clicked component (or a modal opened from one) sits on."""
        return (self.payload.get("message") or {}).get("id")

    @property
    def original(self) -> dict[str, Any] | None:
        """The current state of the original response message, if there is one."""
        return self._store.messages.get(self.original_id) if self.original_id else None

    @property
    def followups(self) -> list[dict[str, Any]]:
        """Followup messages still in existence. The first followup after a thinking defer *is* the original."""
        return [self._store.messages[mid] for mid in self.followup_ids if mid in self._store.messages]

    @property
    def ephemeral(self) -> bool:
        message = self.original
        flags = message["flags"] if message else (self.response_data or {}).get("flags") or 0
        return bool(flags & EPHEMERAL)

    async def acked(self, timeout: float = 5.0) -> InteractionRecord:
        """Waits for the accepted initial response; raises InteractionFailed if it was refused or too late."""
        try:
            await asyncio.wait_for(self._settled.wait(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"{self.label}: no initial response within {timeout} s") from None
        if self.response_type is None:
            raise InteractionFailed(f"{self.label}: {self.rejection}")
        return self

    async def wait_original(self, predicate: Predicate | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """The original response once it exists (and matches ``predicate``)."""
        return await self._store.waiters.wait(
            lambda m: m["id"] == self.original_id and (predicate is None or predicate(m)),
            [self.original] if self.original else [],
            timeout,
            lambda: f"original of {self.label}: {self.original}",
        )

    async def wait_followup(self, predicate: Predicate | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """The first followup (new or edited) that matches ``predicate``."""
        return await self._store.waiters.wait(
            lambda m: m["id"] in self.followup_ids and (predicate is None or predicate(m)),
            self.followups,
            timeout,
            lambda: f"followups of {self.label}: {self.followups}",
        )

    def accept(self, response_type: int, data: dict[str, Any]) -> None:
        self.response_type = response_type
        self.response_data = data
        self._settled.set()

    def refuse(self, reason: str) -> None:
        """An initial response Discord would refuse; the bot may still try again in time."""
        self.rejection = reason
        self._settled.set()


class Resolver:
    """Turns option values into snowflakes and fills ``data.resolved`` as Discord does."""

    def __init__(self, guild: FakeGuild, store: MessageStore, channel_id: int, user_id: int) -> None:
        self.guild = guild
        self.store = store
        self.channel_id = channel_id
        self.user_id = user_id
        self.data: dict[str, dict[str, Any]] = {}

    def _put(self, kind: str, key: str, value: dict[str, Any]) -> str:
        self.data.setdefault(kind, {})[key] = value
        return key

    def value(self, option_type: int, value: Any) -> Any:
        if option_type == STRING:
            return str(value)
        if option_type == INTEGER:
            return int(value)
        if option_type == BOOLEAN:
            return bool(value)
        if option_type == NUMBER:
            return float(value)
        if option_type == ATTACHMENT:
            return self.attachment(value)
        return self.entity(option_type, int(value))

    def attachment(self, file: UserFile) -> str:
        attachment = self.store.host(self.channel_id, *file)
        attachment["ephemeral"] = True
        return self._put("attachments", attachment["id"], attachment)

    def entity(self, option_type: int, entity_id: int) -> str:
        key = str(entity_id)
        if option_type in (USER, MENTIONABLE) and entity_id in self.guild.users:
            self._put("members", key, self.guild.member(entity_id, with_user=False, with_permissions=True))
            return self._put("users", key, self.guild.users[entity_id])
        if option_type in (ROLE, MENTIONABLE) and entity_id in self.guild.roles:
            return self._put("roles", key, self.guild.roles[entity_id])
        if option_type == CHANNEL and entity_id in self.guild.channels:
            channel = self.guild.channels[entity_id]
            summary = {k: channel[k] for k in ("id", "name", "type", "parent_id")}
            return self._put("channels", key, {**summary, "permissions": str(self.guild.permissions(self.user_id))})
        raise ValueError(f"no user/role/channel {entity_id} of option type {option_type} in the fake guild")


def find_command(commands: Iterable[dict[str, Any]], name: str) -> dict[str, Any]:
    for command in commands:
        if command.get("type", 1) == 1 and command["name"] == name:
            return command
    raise LookupError(f"no synced slash command /{name}; await fake.wait_commands_synced() first")


def build_options(
    definitions: list[dict[str, Any]],
    path: list[str],
    values: dict[str, Any],
    resolver: Resolver,
    focused: str | None,
) -> list[dict[str, Any]]:
    """The nested ``data.options`` a Discord client sends for ``/command sub group ...`` with ``values``."""
    if path:
        for definition in definitions:
            if definition["name"] == path[0] and definition["type"] in SUBCOMMAND_TYPES:
                inner = build_options(definition.get("options") or [], path[1:], values, resolver, focused)
                return [{"type": definition["type"], "name": path[0], "options": inner}]
        raise LookupError(f"no subcommand {path[0]!r}")
    if any(definition["type"] in SUBCOMMAND_TYPES for definition in definitions):
        raise LookupError("this command has subcommands; name one, e.g. 'lora new'")
    known = {definition["name"]: definition for definition in definitions}
    if unknown := set(values) - set(known):
        raise LookupError(f"unknown options {sorted(unknown)}; the command has {sorted(known)}")
    options = []
    for name, definition in known.items():
        if name not in values:
            # A Discord client refuses to send a command with a required option missing (autocomplete aside).
            if definition.get("required") and focused is None:
                raise ValueError(f"required option {name!r} is missing")
            continue
        value = values[name]
        if name == focused:
            # While typing, Discord sends the raw text of the focused option, whatever its type.
            options.append({"type": definition["type"], "name": name, "value": str(value), "focused": True})
            continue
        allowed = [choice["value"] for choice in definition.get("choices") or []]
        if allowed and value not in allowed:
            raise ValueError(f"option {name!r} only accepts {allowed}")
        options.append({"type": definition["type"], "name": name, "value": resolver.value(definition["type"], value)})
    return options


def find_component(components: list[dict[str, Any]], custom_id: str) -> dict[str, Any]:
    for _, component in walk_components(components, "components"):
        if component.get("custom_id") == custom_id:
            return component
    raise LookupError(f"no component with custom_id {custom_id!r} on that message")


def modal_submission(modal: dict[str, Any], values: dict[str, Any], resolver: Resolver) -> list[dict[str, Any]]:
    """``data.components`` of a MODAL_SUBMIT, mirroring the modal the bot showed, filled with ``values``.

    Values by component type: text input and radio group a str, checkbox a bool, selects and checkbox
    groups a list of str (ids for user/role/channel selects), file upload a list of (filename, bytes[, type]).
    """
    remaining = dict(values)

    def fill(component: dict[str, Any]) -> dict[str, Any]:
        kind = component["type"]
        out: dict[str, Any] = {"type": kind}
        if "id" in component:
            out["id"] = component["id"]
        if kind == 1:
            out["components"] = [fill(child) for child in component.get("components") or []]
            return out
        if kind == 18:
            out["component"] = fill(component["component"])
            return out
        if kind == 10:
            return out
        custom_id = component["custom_id"]
        given = remaining.pop(custom_id, None)
        out["custom_id"] = custom_id
        if given in (None, "", []) and component.get("required", kind == 4):
            raise ValueError(f"modal field {custom_id!r} is required")
        if kind == 4:
            out["value"] = given or ""
        elif kind == 19:
            out["values"] = [resolver.attachment(file) for file in given or []]
        elif kind in ENTITY_SELECTS:
            out["values"] = [resolver.entity(ENTITY_SELECTS[kind], int(v)) for v in given or []]
        elif kind in (3, 22):
            out["values"] = list(given or [])
        elif kind == 23:
            out["value"] = bool(given)
        elif given is not None:
            out["value"] = given
        return out

    components = [fill(component) for component in modal.get("components") or []]
    if remaining:
        raise LookupError(f"the modal has no fields {sorted(remaining)}")
    return components
