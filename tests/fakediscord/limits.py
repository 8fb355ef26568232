"""Discord's documented limits, checked against what the bot sends.

Every check returns a list of problems ``(dotted path into the payload, what is wrong)``; the REST layer
turns them into Discord's ``50035 Invalid Form Body`` answer and into ``FakeDiscord.violations``.
discord.py checks almost none of these client-side, so a bot that breaks one only finds out in production.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

Problem = tuple[str, str]

EMPTY_MESSAGE: Problem = ("", "Cannot send an empty message")

CONTENT_MAX = 2000
EMBEDS_MAX = 10
EMBED_TITLE_MAX = 256
EMBED_DESCRIPTION_MAX = 4096
EMBED_FIELDS_MAX = 25
EMBED_FIELD_NAME_MAX = 256
EMBED_FIELD_VALUE_MAX = 1024
EMBED_FOOTER_MAX = 2048
EMBED_AUTHOR_MAX = 256
EMBED_TOTAL_MAX = 6000
FILES_MAX = 10

ACTION_ROWS_MAX = 5
ROW_WIDTH_MAX = 5
CUSTOM_ID_MAX = 100
BUTTON_LABEL_MAX = 80
SELECT_OPTIONS_MAX = 25
SELECT_OPTION_TEXT_MAX = 100
SELECT_PLACEHOLDER_MAX = 150
V2_COMPONENTS_MAX = 40
V2_TEXT_MAX = 4000

MODAL_TITLE_MAX = 45
MODAL_COMPONENTS_MAX = 5
MODAL_LABEL_MAX = 45
MODAL_LABEL_DESCRIPTION_MAX = 100
TEXT_INPUT_VALUE_MAX = 4000
TEXT_INPUT_PLACEHOLDER_MAX = 100

CHOICES_MAX = 25
CHOICE_NAME_MAX = 100
CHOICE_VALUE_MAX = 100

COMMANDS_MAX = 100
OPTIONS_MAX = 25
DESCRIPTION_MAX = 100
COMMAND_NAME = re.compile(r"^[-_\w]{1,32}$")

COMPONENTS_V2_FLAG = 1 << 15
ACTION_ROW, BUTTON, STRING_SELECT, TEXT_INPUT, TEXT_DISPLAY, LABEL, FILE_UPLOAD = 1, 2, 3, 4, 10, 18, 19
SELECT_TYPES = frozenset({3, 5, 6, 7, 8})
LINK_STYLE, PREMIUM_STYLE = 5, 6
SUBCOMMAND_TYPES = frozenset({1, 2})


def _too_long(problems: list[Problem], path: str, value: Any, limit: int) -> None:
    if isinstance(value, str) and len(value) > limit:
        problems.append((path, f"{len(value)} characters (max {limit})"))


def walk_components(components: list[dict[str, Any]], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every component, nested ones included (rows, containers, section accessories, labels)."""
    for index, component in enumerate(components):
        here = f"{path}.{index}"
        yield here, component
        yield from walk_components(component.get("components") or [], f"{here}.components")
        for key in ("accessory", "component"):
            if isinstance(component.get(key), dict):
                yield from walk_components([component[key]], f"{here}.{key}")


def check_message(message: dict[str, Any]) -> list[Problem]:
    """Checks a message as it will stand after the request (a new message, or an edit merged in)."""
    problems: list[Problem] = []
    content = message.get("content") or ""
    embeds = message.get("embeds") or []
    components = message.get("components") or []
    v2 = bool((message.get("flags") or 0) & COMPONENTS_V2_FLAG)
    _too_long(problems, "content", content, CONTENT_MAX)
    if v2 and (content or embeds):
        problems.append(("content", "messages flagged IS_COMPONENTS_V2 cannot have content or embeds"))
    problems += check_embeds(embeds)
    problems += check_components(components, v2=v2)
    if len(message.get("attachments") or []) > FILES_MAX:
        problems.append(("attachments", f"{len(message['attachments'])} attachments (max {FILES_MAX})"))
    if not (content or embeds or components or message.get("attachments") or message.get("poll")):
        problems.append(EMPTY_MESSAGE)
    return problems


def check_embeds(embeds: list[dict[str, Any]]) -> list[Problem]:
    problems: list[Problem] = []
    if len(embeds) > EMBEDS_MAX:
        problems.append(("embeds", f"{len(embeds)} embeds (max {EMBEDS_MAX})"))
    total = 0
    for index, embed in enumerate(embeds):
        path = f"embeds.{index}"
        footer = (embed.get("footer") or {}).get("text")
        author = (embed.get("author") or {}).get("name")
        fields = embed.get("fields") or []
        _too_long(problems, f"{path}.title", embed.get("title"), EMBED_TITLE_MAX)
        _too_long(problems, f"{path}.description", embed.get("description"), EMBED_DESCRIPTION_MAX)
        _too_long(problems, f"{path}.footer.text", footer, EMBED_FOOTER_MAX)
        _too_long(problems, f"{path}.author.name", author, EMBED_AUTHOR_MAX)
        if len(fields) > EMBED_FIELDS_MAX:
            problems.append((f"{path}.fields", f"{len(fields)} fields (max {EMBED_FIELDS_MAX})"))
        texts = [embed.get("title"), embed.get("description"), footer, author]
        for number, field in enumerate(fields):
            for key, limit in (("name", EMBED_FIELD_NAME_MAX), ("value", EMBED_FIELD_VALUE_MAX)):
                value = field.get(key)
                if not value:
                    problems.append((f"{path}.fields.{number}.{key}", "required"))
                _too_long(problems, f"{path}.fields.{number}.{key}", value, limit)
                texts.append(value)
        total += sum(len(text) for text in texts if isinstance(text, str))
    if total > EMBED_TOTAL_MAX:
        problems.append(("embeds", f"{total} characters across all embeds (max {EMBED_TOTAL_MAX})"))
    return problems


def check_components(components: list[dict[str, Any]], *, v2: bool) -> list[Problem]:
    problems: list[Problem] = []
    if v2:
        everything = list(walk_components(components, "components"))
        if len(everything) > V2_COMPONENTS_MAX:
            problems.append(("components", f"{len(everything)} components (max {V2_COMPONENTS_MAX})"))
        text = sum(len(c.get("content") or "") for _, c in everything if c.get("type") == TEXT_DISPLAY)
        if text > V2_TEXT_MAX:
            problems.append(("components", f"{text} characters of text displays (max {V2_TEXT_MAX})"))
    else:
        if len(components) > ACTION_ROWS_MAX:
            problems.append(("components", f"{len(components)} action rows (max {ACTION_ROWS_MAX})"))
        for index, row in enumerate(components):
            if row.get("type") != ACTION_ROW:
                problems.append((f"components.{index}", "top-level components must be action rows"))
    seen: set[str] = set()
    for path, component in walk_components(components, "components"):
        if component.get("type") == ACTION_ROW:
            _check_row(problems, path, component)
        _check_interactive(problems, path, component, seen)
    return problems


def _check_row(problems: list[Problem], path: str, row: dict[str, Any]) -> None:
    items = row.get("components") or []
    if not items:
        problems.append((f"{path}.components", "an action row needs 1 to 5 components"))
    if len(items) > ROW_WIDTH_MAX:
        problems.append((f"{path}.components", f"{len(items)} components in one row (max {ROW_WIDTH_MAX})"))
    if len(items) > 1 and any(item.get("type") in SELECT_TYPES for item in items):
        problems.append((f"{path}.components", "a select menu must be alone in its action row"))


def _check_interactive(problems: list[Problem], path: str, component: dict[str, Any], seen: set[str]) -> None:
    kind = component.get("type")
    custom_id = component.get("custom_id")
    if kind == BUTTON:
        style = component.get("style")
        _too_long(problems, f"{path}.label", component.get("label"), BUTTON_LABEL_MAX)
        if style == LINK_STYLE:
            if not component.get("url") or custom_id is not None:
                problems.append((path, "a link button needs a url and no custom_id"))
        elif style == PREMIUM_STYLE:
            if not component.get("sku_id"):
                problems.append((path, "a premium button needs a sku_id"))
        elif not custom_id:
            problems.append((f"{path}.custom_id", "required for non-link buttons"))
        if style != PREMIUM_STYLE and not component.get("label") and not component.get("emoji"):
            problems.append((path, "a button needs a label or an emoji"))
    elif kind in SELECT_TYPES:
        if not custom_id:
            problems.append((f"{path}.custom_id", "required for select menus"))
        _too_long(problems, f"{path}.placeholder", component.get("placeholder"), SELECT_PLACEHOLDER_MAX)
        if kind == STRING_SELECT:
            options = component.get("options") or []
            if not 1 <= len(options) <= SELECT_OPTIONS_MAX:
                problems.append((f"{path}.options", f"{len(options)} options (1 to {SELECT_OPTIONS_MAX})"))
            for number, option in enumerate(options):
                for key in ("label", "value", "description"):
                    _too_long(problems, f"{path}.options.{number}.{key}", option.get(key), SELECT_OPTION_TEXT_MAX)
    if custom_id is None:
        return
    if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= CUSTOM_ID_MAX:
        size = len(custom_id) if isinstance(custom_id, str) else custom_id
        problems.append((f"{path}.custom_id", f"custom_id must be 1 to {CUSTOM_ID_MAX} characters, got {size}"))
    elif custom_id in seen:
        problems.append((f"{path}.custom_id", f"duplicate custom_id {custom_id!r} in one message"))
    else:
        seen.add(custom_id)


def check_modal(modal: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    title = modal.get("title")
    custom_id = modal.get("custom_id")
    components = modal.get("components") or []
    if not isinstance(title, str) or not 1 <= len(title) <= MODAL_TITLE_MAX:
        problems.append(("data.title", f"title must be 1 to {MODAL_TITLE_MAX} characters, got {len(title or '')}"))
    if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= CUSTOM_ID_MAX:
        problems.append(("data.custom_id", f"custom_id must be 1 to {CUSTOM_ID_MAX} characters"))
    if not 1 <= len(components) <= MODAL_COMPONENTS_MAX:
        problems.append(("data.components", f"{len(components)} components (1 to {MODAL_COMPONENTS_MAX})"))
    for index, top in enumerate(components):
        path = f"data.components.{index}"
        if top.get("type") == ACTION_ROW:
            inner = top.get("components") or []
            if len(inner) != 1 or inner[0].get("type") != TEXT_INPUT:
                problems.append((path, "a modal action row holds exactly one text input"))
        elif top.get("type") == LABEL:
            _too_long(problems, f"{path}.label", top.get("label"), MODAL_LABEL_MAX)
            _too_long(problems, f"{path}.description", top.get("description"), MODAL_LABEL_DESCRIPTION_MAX)
            if not top.get("label") or not isinstance(top.get("component"), dict):
                problems.append((path, "a label needs a label text and a component"))
        elif top.get("type") != TEXT_DISPLAY:
            problems.append((path, f"component type {top.get('type')} is not allowed at the top of a modal"))
    seen: set[str] = set()
    for path, component in walk_components(components, "data.components"):
        if component.get("type") == TEXT_INPUT:
            _too_long(problems, f"{path}.label", component.get("label"), MODAL_LABEL_MAX)
            _too_long(problems, f"{path}.placeholder", component.get("placeholder"), TEXT_INPUT_PLACEHOLDER_MAX)
            _too_long(problems, f"{path}.value", component.get("value"), TEXT_INPUT_VALUE_MAX)
        if component.get("type") not in (ACTION_ROW, LABEL, TEXT_DISPLAY):
            if not component.get("custom_id"):
                problems.append((f"{path}.custom_id", "required"))
            _check_interactive(problems, path, component, seen)
    return problems


def check_autocomplete(data: dict[str, Any]) -> list[Problem]:
    choices = data.get("choices")
    if not isinstance(choices, list):
        return [("data.choices", "required")]
    return _check_choices(choices, "data.choices")


def _check_choices(choices: list[dict[str, Any]], path: str) -> list[Problem]:
    problems: list[Problem] = []
    if len(choices) > CHOICES_MAX:
        problems.append((path, f"{len(choices)} choices (max {CHOICES_MAX})"))
    for index, choice in enumerate(choices):
        name = choice.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= CHOICE_NAME_MAX:
            problems.append((f"{path}.{index}.name", f"choice name must be 1 to {CHOICE_NAME_MAX} characters"))
        _too_long(problems, f"{path}.{index}.value", choice.get("value"), CHOICE_VALUE_MAX)
    return problems


def check_commands(commands: list[dict[str, Any]]) -> list[Problem]:
    problems: list[Problem] = []
    if len(commands) > COMMANDS_MAX:
        problems.append(("", f"{len(commands)} commands (max {COMMANDS_MAX})"))
    seen: set[tuple[int, str]] = set()
    for index, command in enumerate(commands):
        key = (command.get("type", 1), command.get("name", ""))
        if key in seen:
            problems.append((f"{index}.name", f"duplicate command name {key[1]!r}"))
        seen.add(key)
        if key[0] == 1:
            _check_named(problems, str(index), command)
            _check_options(problems, f"{index}.options", command.get("options") or [])
        elif not 1 <= len(key[1]) <= 32:
            problems.append((f"{index}.name", "context menu names must be 1 to 32 characters"))
    return problems


def _check_named(problems: list[Problem], path: str, item: dict[str, Any]) -> None:
    name = item.get("name") or ""
    description = item.get("description") or ""
    if not COMMAND_NAME.match(name) or name != name.lower():
        problems.append((f"{path}.name", f"{name!r} must match ^[-_\\w]{{1,32}}$ and be lowercase"))
    if not 1 <= len(description) <= DESCRIPTION_MAX:
        problems.append((f"{path}.description", f"description must be 1 to {DESCRIPTION_MAX} characters"))


def _check_options(problems: list[Problem], path: str, options: list[dict[str, Any]]) -> None:
    if len(options) > OPTIONS_MAX:
        problems.append((path, f"{len(options)} options (max {OPTIONS_MAX})"))
    optional_seen = False
    for index, option in enumerate(options):
        here = f"{path}.{index}"
        _check_named(problems, here, option)
        problems.extend(_check_choices(option.get("choices") or [], f"{here}.choices"))
        if option.get("type") in SUBCOMMAND_TYPES:
            _check_options(problems, f"{here}.options", option.get("options") or [])
        elif option.get("required"):
            if optional_seen:
                problems.append((here, "required options must come before optional ones"))
        else:
            optional_seen = True
