"""Discord's REST API, the parts a discord.py bot uses, answering like Discord and enforcing its limits.

Every failure is a 4xx with a Discord-shaped JSON error: discord.py retries 5xx answers for ~25 s.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

from . import limits
from .interactions import APPLICATION_COMMAND, AUTOCOMPLETE, MESSAGE_COMPONENT, MODAL_SUBMIT, InteractionRecord
from .messages import EPHEMERAL, LOADING, Upload, public
from .payloads import json_response

if TYPE_CHECKING:
    from .server import FakeDiscord

log = logging.getLogger(__name__)

API = "/api/v10"
ID = r"{%s:\d+}"
CHANNEL_MESSAGE, DEFERRED_MESSAGE, DEFERRED_UPDATE, UPDATE_MESSAGE, AUTOCOMPLETE_RESULT, MODAL = 4, 5, 6, 7, 8, 9
VALID_RESPONSES = {
    APPLICATION_COMMAND: {CHANNEL_MESSAGE, DEFERRED_MESSAGE, MODAL},
    MESSAGE_COMPONENT: {CHANNEL_MESSAGE, DEFERRED_MESSAGE, DEFERRED_UPDATE, UPDATE_MESSAGE, MODAL},
    AUTOCOMPLETE: {AUTOCOMPLETE_RESULT},
    MODAL_SUBMIT: {CHANNEL_MESSAGE, DEFERRED_MESSAGE, DEFERRED_UPDATE, UPDATE_MESSAGE},
}
MESSAGE_TYPE_DEFAULT, MESSAGE_TYPE_REPLY, MESSAGE_TYPE_CHAT_INPUT = 0, 19, 20


class ApiError(Exception):
    """An error answer; ``violation`` (when set) is a limit or protocol rule the bot broke."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        errors: dict[str, Any] | None = None,
        violation: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"code": code, "message": message}
        if errors:
            self.body["errors"] = errors
        self.violation = violation


def invalid(problems: list[limits.Problem]) -> ApiError:
    if limits.EMPTY_MESSAGE in problems:
        return ApiError(400, 50006, "Cannot send an empty message", violation="empty message")
    errors: dict[str, Any] = {}
    for path, text in problems:
        node = errors
        for part in path.split("."):
            node = node.setdefault(part, {})
        node.setdefault("_errors", []).append({"code": "LIMIT", "message": text})
    violation = "; ".join(f"{path}: {text}" for path, text in problems)
    return ApiError(400, 50035, "Invalid Form Body", errors=errors, violation=violation)


def unknown(what: str, code: int, violation: str | None = None) -> ApiError:
    return ApiError(404, code, f"Unknown {what}", violation=violation)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_middleware(fake: FakeDiscord) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        fake.requests.append(f"{request.method} {request.path}")
        # The route pattern, not the path: interaction tokens are 86 characters of noise.
        resource = request.match_info.route.resource
        where = f"{request.method} {resource.canonical if resource else request.path}"
        try:
            # Interaction callbacks and webhooks are authorised by their token alone.
            needs_auth = request.path.startswith(API) and not request.path.startswith(
                (f"{API}/webhooks/", f"{API}/interactions/")
            )
            if needs_auth and request.headers.get("Authorization") != f"Bot {fake.token}":
                raise ApiError(401, 0, "401: Unauthorized")
            return await handler(request)
        except ApiError as error:
            answer = error
        except web.HTTPException as error:
            # Only the router raises these (no route, wrong method): a route the fake lacks.
            answer = ApiError(error.status, 0, error.reason, violation="fake discord does not implement this route")
        except Exception as error:
            log.exception("fake discord failed on %s", where)
            answer = ApiError(400, 0, f"fake discord crashed: {error!r}", violation=f"fake discord crashed: {error!r}")
        if answer.violation:
            fake.violate(f"{where}: {answer.violation}")
        fake.errors.append(f"{where} -> {answer.status} {json.dumps(answer.body)}")
        return json_response(answer.body, answer.status)

    return middleware


class RestApi:
    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake
        self.store = fake.store

    def routes(self) -> list[web.RouteDef]:
        message = f"{API}/channels/{ID % 'channel_id'}/messages/{ID % 'message_id'}"
        webhook = f"{API}/webhooks/{ID % 'app_id'}/{{token}}"
        webhook_message = f"{webhook}/messages/{{message_id}}"
        return [
            web.get(f"{API}/users/@me", self.get_me),
            web.get(f"{API}/users/{ID % 'user_id'}", self.get_user),
            web.get(f"{API}/oauth2/applications/@me", self.get_application),
            web.put(f"{API}/applications/{ID % 'app_id'}/commands", self.put_commands),
            web.get(f"{API}/applications/{ID % 'app_id'}/commands", self.get_commands),
            web.put(f"{API}/applications/{ID % 'app_id'}/guilds/{ID % 'guild_id'}/commands", self.put_commands),
            web.get(f"{API}/applications/{ID % 'app_id'}/guilds/{ID % 'guild_id'}/commands", self.get_commands),
            web.get(f"{API}/guilds/{ID % 'guild_id'}/members/{ID % 'user_id'}", self.get_member),
            web.get(f"{API}/channels/{ID % 'channel_id'}", self.get_channel),
            web.post(f"{API}/channels/{ID % 'channel_id'}/typing", self.typing),
            web.post(f"{API}/channels/{ID % 'channel_id'}/messages", self.create_message),
            web.get(message, self.get_message),
            web.patch(message, self.edit_message),
            web.delete(message, self.delete_message),
            web.post(f"{API}/interactions/{ID % 'interaction_id'}/{{token}}/callback", self.interaction_callback),
            web.post(webhook, self.create_followup),
            web.get(webhook_message, self.get_webhook_message),
            web.patch(webhook_message, self.edit_webhook_message),
            web.delete(webhook_message, self.delete_webhook_message),
            web.get(f"/attachments/{ID % 'channel_id'}/{ID % 'attachment_id'}/{{filename}}", self.download),
        ]

    # -- bodies ---------------------------------------------------------------------------------------

    async def read_body(self, request: web.Request) -> tuple[Any, list[Upload]]:
        """The JSON payload and the uploaded files, of a JSON or a multipart (payload_json + files[n]) body."""
        if not request.can_read_body:
            return {}, []
        if request.content_type != "multipart/form-data":
            return await request.json(), []
        payload: Any = {}
        uploads: list[Upload] = []
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if part.name == "payload_json":
                payload = json.loads(await part.text())
            elif part.name and part.name.startswith("files["):
                uploads.append(Upload(int(part.name[6:-1]), part.filename or "file", bytes(await part.read())))
        if len(uploads) > limits.FILES_MAX:
            raise invalid([("files", f"{len(uploads)} files (max {limits.FILES_MAX})")])
        for upload in uploads:
            if len(upload.data) > self.fake.upload_limit:
                raise ApiError(
                    413,
                    40005,
                    "Request entity too large",
                    violation=f"file {upload.filename!r} is {len(upload.data)} bytes "
                    f"(upload limit {self.fake.upload_limit})",
                )
        return payload, uploads

    def write(self, base: dict[str, Any], payload: dict[str, Any], uploads: list[Upload]) -> dict[str, Any]:
        """Applies a create or edit to ``base`` if the result keeps within Discord's limits."""
        message, new_files, problems = self.store.render(base, payload, uploads)
        problems += limits.check_message(message)
        if problems:
            raise invalid(problems)
        return self.store.commit(message, new_files)

    def interaction_message(self, it: InteractionRecord, message_type: int, flags: int) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "id": it.id,
            "type": it.type,
            "user": it.payload["member"]["user"],
            "authorizing_integration_owners": {"0": str(self.fake.guild.id)},
        }
        if it.source_message_id:
            metadata["interacted_message_id"] = it.source_message_id
        if it.original_id:
            metadata["original_response_message_id"] = it.original_id
        return self.store.skeleton(
            it.payload["channel_id"],
            self.fake.bot_user,
            type=message_type,
            flags=flags,
            webhook_id=str(self.fake.app_id),
            application_id=str(self.fake.app_id),
            interaction_metadata=metadata,
            interaction_id=it.id,
        )

    # -- identity, commands, guild ----------------------------------------------------------------------

    async def get_me(self, request: web.Request) -> web.Response:
        return json_response({**self.fake.bot_user, "verified": True, "mfa_enabled": False, "locale": "en-US"})

    async def get_user(self, request: web.Request) -> web.Response:
        user_id = int(request.match_info["user_id"])
        if user_id not in self.fake.guild.users:
            raise unknown("User", 10013)
        return json_response(self.fake.guild.users[user_id])

    async def get_application(self, request: web.Request) -> web.Response:
        return json_response(self.fake.application())

    def _check_scope(self, request: web.Request) -> str | None:
        guild_id = request.match_info.get("guild_id")
        if int(request.match_info["app_id"]) != self.fake.app_id or (guild_id and int(guild_id) != self.fake.guild.id):
            raise ApiError(403, 50001, "Missing Access", violation="wrong application or guild id")
        return guild_id

    async def put_commands(self, request: web.Request) -> web.Response:
        guild_id = self._check_scope(request)
        commands, _ = await self.read_body(request)
        if problems := limits.check_commands(commands):
            raise invalid(problems)
        return json_response(self.fake.record_sync(commands, guild_id=guild_id))

    async def get_commands(self, request: web.Request) -> web.Response:
        guild_id = self._check_scope(request)
        return json_response(self.fake.guild_commands if guild_id else self.fake.global_commands)

    async def get_member(self, request: web.Request) -> web.Response:
        user_id = int(request.match_info["user_id"])
        if int(request.match_info["guild_id"]) != self.fake.guild.id or user_id not in self.fake.guild.users:
            raise unknown("Member", 10007)
        return json_response(self.fake.guild.member(user_id))

    def _channel(self, request: web.Request) -> dict[str, Any]:
        channel = self.fake.guild.channels.get(int(request.match_info["channel_id"]))
        if channel is None:
            raise unknown("Channel", 10003)
        return channel

    async def get_channel(self, request: web.Request) -> web.Response:
        return json_response(self._channel(request))

    async def typing(self, request: web.Request) -> web.Response:
        self._channel(request)
        return web.Response(status=204)

    # -- channel messages (bot token; no 15-minute limit) ------------------------------------------------

    async def create_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        payload, uploads = await self.read_body(request)
        kind = MESSAGE_TYPE_REPLY if payload.get("message_reference") else MESSAGE_TYPE_DEFAULT
        base = self.store.skeleton(channel["id"], self.fake.bot_user, type=kind, guild_id=str(self.fake.guild.id))
        return json_response(public(self.write(base, payload, uploads)))

    def _channel_message(self, request: web.Request) -> dict[str, Any]:
        message = self.store.messages.get(request.match_info["message_id"])
        if message is None or message["channel_id"] != request.match_info["channel_id"]:
            raise unknown("Message", 10008)
        if message["flags"] & EPHEMERAL:
            raise unknown(
                "Message", 10008, "ephemeral messages are reachable only through the interaction token, for 15 minutes"
            )
        return message

    async def get_message(self, request: web.Request) -> web.Response:
        return json_response(public(self._channel_message(request)))

    async def edit_message(self, request: web.Request) -> web.Response:
        message = self._channel_message(request)
        payload, uploads = await self.read_body(request)
        return json_response(public(self.write(message, payload, uploads)))

    async def delete_message(self, request: web.Request) -> web.Response:
        self.store.delete(self._channel_message(request)["id"])
        return web.Response(status=204)

    # -- interaction responses --------------------------------------------------------------------------

    async def interaction_callback(self, request: web.Request) -> web.Response:
        it = self.fake.interactions.get(request.match_info["interaction_id"])
        if it is None or it.token != request.match_info["token"]:
            raise unknown("interaction", 10062, "callback for an interaction the fake never sent")
        if self.fake.check_ack_deadline(it):
            raise unknown("interaction", 10062)  # the violation was recorded when the deadline passed
        if it.response_type is not None:
            violation = f"second initial response to {it.label}"
            raise ApiError(400, 40060, "Interaction has already been acknowledged.", violation=violation)
        try:
            body, uploads = await self.read_body(request)
            message = self._respond(it, body.get("type"), body.get("data") or {}, uploads)
        except ApiError as error:
            it.refuse(f"{error.status} {json.dumps(error.body)}")
            raise
        answer: dict[str, Any] = {
            "interaction": {
                "id": it.id,
                "type": it.type,
                "response_message_id": message["id"] if message else None,
                "response_message_loading": bool(message and message["flags"] & LOADING),
                "response_message_ephemeral": bool(message and message["flags"] & EPHEMERAL),
            },
            "resource": {"type": it.response_type},
        }
        if message:
            # discord.py reads the message id from here to attach views to the response message.
            answer["resource"]["message"] = public(message)
        return json_response(answer)

    def _respond(
        self, it: InteractionRecord, response_type: Any, data: dict[str, Any], uploads: list[Upload]
    ) -> dict[str, Any] | None:
        """Applies an initial response; returns the message it created or updated, if any."""
        if response_type not in VALID_RESPONSES[it.type] or (
            response_type in (DEFERRED_UPDATE, UPDATE_MESSAGE) and not it.source_message_id
        ):
            raise ApiError(
                400, 50035, "Invalid Form Body", violation=f"response type {response_type} is not valid for {it.label}"
            )
        message = None
        if response_type == CHANNEL_MESSAGE:
            kind = MESSAGE_TYPE_CHAT_INPUT if it.type == APPLICATION_COMMAND else MESSAGE_TYPE_REPLY
            base = self.interaction_message(it, kind, (data.get("flags") or 0) & EPHEMERAL)
            message = self.write(base, data, uploads)
        elif response_type == DEFERRED_MESSAGE:
            kind = MESSAGE_TYPE_CHAT_INPUT if it.type == APPLICATION_COMMAND else MESSAGE_TYPE_REPLY
            flags = LOADING | ((data.get("flags") or 0) & EPHEMERAL)
            message = self.store.commit(self.interaction_message(it, kind, flags), [])
        elif response_type in (DEFERRED_UPDATE, UPDATE_MESSAGE):
            message = self.store.messages.get(it.source_message_id)
            if message is None:
                raise unknown("Message", 10008)
            if response_type == UPDATE_MESSAGE:
                message = self.write(message, data, uploads)
        elif response_type == AUTOCOMPLETE_RESULT:
            if problems := limits.check_autocomplete(data):
                raise invalid(problems)
        elif problems := limits.check_modal(data):
            raise invalid(problems)
        if message:
            it.original_id = message["id"]
            self.store.waiters.notify(message)  # again, now that it counts as the original
        it.accept(response_type, data)
        return message

    # -- webhooks: followups and the original response (interaction token, 15 minutes) ---------------------

    def _webhook_interaction(self, request: web.Request) -> InteractionRecord:
        it = self.fake.interaction_by_token(request.match_info["token"])
        if it is None or int(request.match_info["app_id"]) != self.fake.app_id:
            raise unknown("Webhook", 10015, "webhook call with an unknown application id or interaction token")
        age = self.fake.now() - it.dispatched_at
        if age > self.fake.token_lifetime:
            raise ApiError(
                401,
                50027,
                "Invalid Webhook Token",
                violation=f"{it.label}: interaction token used {age:.0f} s after the interaction "
                f"(it lives {self.fake.token_lifetime:.0f} s); edit a channel message instead",
            )
        return it

    def _webhook_message(self, request: web.Request) -> dict[str, Any]:
        it = self._webhook_interaction(request)
        message_id = request.match_info["message_id"]
        if message_id == "@original":
            if it.original_id is None:
                raise unknown("Message", 10008, f"@original of {it.label} before any initial response created one")
            message_id = it.original_id
        elif message_id != it.original_id and message_id not in it.followup_ids:
            raise unknown("Message", 10008, f"message {message_id} is not a response to {it.label}")
        message = self.store.messages.get(message_id)
        if message is None:
            raise unknown("Message", 10008)
        return message

    async def create_followup(self, request: web.Request) -> web.Response:
        it = self._webhook_interaction(request)
        if it.response_type is None:
            raise unknown("Webhook", 10015, f"followup to {it.label} before its initial response")
        payload, uploads = await self.read_body(request)
        original = it.original
        if original and original["flags"] & LOADING:
            # The first followup after a "thinking" defer replaces the loading message (keeping its ephemerality).
            message = self.write(original, payload, uploads)
        else:
            base = self.interaction_message(it, MESSAGE_TYPE_REPLY, (payload.get("flags") or 0) & EPHEMERAL)
            message = self.write(base, payload, uploads)
        it.followup_ids.append(message["id"])
        self.store.waiters.notify(message)  # again, now that it counts as a followup
        if request.query.get("wait") in ("1", "true", "True"):
            return json_response(public(message))
        return web.Response(status=204)

    async def get_webhook_message(self, request: web.Request) -> web.Response:
        return json_response(public(self._webhook_message(request)))

    async def edit_webhook_message(self, request: web.Request) -> web.Response:
        message = self._webhook_message(request)
        payload, uploads = await self.read_body(request)
        return json_response(public(self.write(message, payload, uploads)))

    async def delete_webhook_message(self, request: web.Request) -> web.Response:
        self.store.delete(self._webhook_message(request)["id"])
        return web.Response(status=204)

    # -- CDN -------------------------------------------------------------------------------------------

    async def download(self, request: web.Request) -> web.Response:
        hosted = self.store.hosted.get(request.match_info["attachment_id"])
        if hosted is None:
            return web.Response(status=404)
        data, content_type = hosted
        return web.Response(body=data, content_type=content_type)
