"""Rules for what members type: project names, trigger words, classes. Each check returns the cleaned
value or raises Invalid with a message that says how to fix it."""
from __future__ import annotations

import re
import unicodedata

from engine.errors import Invalid

PROJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
TRIGGER_MAX = 40
CLASS_MAX = 40


def project_name(value: str) -> str:
    value = value.strip()
    if not PROJECT_NAME.match(value) or value.endswith("."):
        raise Invalid(
            f"project name {value!r} is not allowed: use 1–40 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit (for example XingBar30)"
        )
    return value


# Characters a member cannot see: controls (newlines included), format characters (zero-width, direction
# overrides), private-use and unassigned code points, line and paragraph separators.
_HIDDEN_CATEGORIES = frozenset(("Cc", "Cf", "Co", "Cn", "Zl", "Zp"))


def is_hidden(ch: str) -> bool:
    return unicodedata.category(ch) in _HIDDEN_CATEGORIES


# What A1111's and ComfyUI's prompt parsers read as syntax, not as part of a word: ( ) [ ] emphasis, (x:1.5)
# weights, <lora:…> calls, {a|b} alternatives (dynamic prompts), a backslash escaping the next one.
PROMPT_SYNTAX = "()[]<>{}|:\\"


def _refuse_hidden_and_syntax(value: str, what: str) -> None:
    """Invisible characters (zero-width, direction marks, controls) would make a word that looks right in
    Discord but tokenizes as something else; prompt syntax would be misread by the UIs."""
    for ch in value:
        if is_hidden(ch):
            name = unicodedata.name(ch, "a control character")
            raise Invalid(f"{what} contains an invisible character (U+{ord(ch):04X} {name}): type it again "
                          "without pasting, in plain letters")
    syntax = sorted({ch for ch in value if ch in PROMPT_SYNTAX})
    if syntax:
        raise Invalid(f"{what} {value!r} contains {' '.join(syntax)}, which prompts read as syntax (emphasis, "
                      "weights, LoRA calls, alternatives): use letters, digits, '-' or '_'")


def trigger_word(value: str) -> str:
    value = value.strip()
    if not value:
        raise Invalid("the trigger word is empty: pick a made-up word such as XingBar")
    _refuse_hidden_and_syntax(value, "trigger word")
    if "," in value:
        raise Invalid(f"trigger word {value!r} contains a comma, which splits it into two tags: remove the comma")
    if any(ch.isspace() for ch in value):
        joined = "".join(value.split())
        raise Invalid(f"trigger word {value!r} contains spaces; use one word such as {joined!r}")
    if len(value) > TRIGGER_MAX:
        raise Invalid(f"trigger word is {len(value)} characters long; keep it to {TRIGGER_MAX} or fewer")
    return value


def class_name(value: str) -> str:
    value = " ".join(value.split())
    if not value:
        raise Invalid("the class is empty: say what the character is, e.g. man, woman or 1girl")
    _refuse_hidden_and_syntax(value, "class")
    if "," in value:
        raise Invalid(f"class {value!r} contains a comma: use a single class such as man, woman or 1girl")
    if len(value) > CLASS_MAX:
        raise Invalid(f"class is {len(value)} characters long; keep it to {CLASS_MAX} or fewer")
    return value


def unique_dir_name(name: str, taken: set[str]) -> str:
    """The folder for a new project: its name, or name-2, name-3… if an old folder has that name."""
    candidate, n = name, 1
    lowered = {entry.lower() for entry in taken}
    while candidate.lower() in lowered:
        n += 1
        candidate = f"{name}-{n}"
    return candidate
