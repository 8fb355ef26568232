"""Does the trigger word already mean something? (DESIGN §1 step 4, "trigger-word collision check")

The seed's lesson: `Xing` was already a concept to the base model, so the character drifted toward
it; `XingBar` was safe. A trigger should be a word nothing else owns. Three checks, each run when its
source is available:

1. the tagger knows it as a tag (selected_tags.csv, names as captions write them: `_` → space for
   tags longer than 3 characters), so captions of other pictures use it for something else;
2. the base model's CLIP tokenizer reads it as one whole-word token, so the text encoder already has
   a learned meaning for it (CLIP lower-cases; whole-word tokens end with `</w>`);
3. it is a frequent English word (the bundled list engine/curation/data/common_words.txt, or its
   plural), so ordinary prompts would call up the character.

The safer variant (`suggestion`) is made by one deterministic rule: the trigger's letters and digits
(the parts between other characters joined in camel case, capped so the result fits naming.TRIGGER_MAX),
followed by the first made-up syllable of SYLLABLES, capitalised, for which the whole word passes every
check that could run; if none does, two syllables (first pair in list order). `Xing` → `XingZor`.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import naming
from engine.tagging.model import TagTable
from engine.tagging.tags import underscore_rule

COMMON_WORDS_FILE = Path(__file__).with_name("data") / "common_words.txt"
# Made-up syllables in the order the suggestion tries them: short, easy to say and type, not English.
SYLLABLES = ("Zor", "Vex", "Quil", "Drax", "Thar", "Bex", "Kiro", "Zan", "Lux", "Mivo", "Tesh", "Orin")
MIN_REAL_VOCABULARY = 10_000
_QUALIFIER = re.compile(r"\s*\([^()]*\)$")   # Danbooru's "(series)" after a character name


@dataclass(frozen=True)
class CollisionReport:
    trigger: str
    problems: list[str]              # one sentence each, for the member; empty when safe
    suggestion: str | None           # a safer trigger, when there are problems and one was found
    safe: bool                       # no check that could run found a problem
    skipped: list[str] = field(default_factory=list)   # checks that could not run, and why

    def lines(self) -> list[str]:
        """What the member is told: each problem, the safer choice, and each check that could not run (so
        "no problem found" is never read as "checked everything")."""
        said = [f"⚠️ {problem}" for problem in self.problems]
        if self.suggestion:
            said.append(f"A safer choice: {self.suggestion}")
        if not self.problems:
            said.append("✅ No problem found" + (" by the checks that could run." if self.skipped else "."))
        return said + [f"ℹ️ Not checked: {why}" for why in self.skipped]


def normalise(text: str) -> str:
    """How a trigger and a tag are compared: as a caption writes them (`_` as a space in words longer
    than 3 characters, so the emoticon `^_^` stays itself), lower case, spaces collapsed."""
    return " ".join(underscore_rule(text.strip()).lower().split())


def tagger_tag_names(table: TagTable) -> set[str]:
    """The `tagger_tags` argument from a loaded selected_tags.csv (`engine.tagging.model.load_tags`):
    every tag as a caption writes it, plus character names without their "(series)" qualifier."""
    names: set[str] = set()
    for name in table.names:
        written = underscore_rule(name)
        names.add(written)
        bare = _QUALIFIER.sub("", written)
        if bare and bare != written:
            names.add(bare)
    return names


@functools.lru_cache(maxsize=1)
def common_words() -> frozenset[str]:
    lines = COMMON_WORDS_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip().lower() for line in lines if line.strip() and not line.startswith("#"))


@functools.lru_cache(maxsize=4)
def _tokenizer(folder: str) -> Any:
    from transformers import CLIPTokenizer

    # A folder only: never a Hub lookup (a missing folder must not turn into a network call).
    return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def clip_tokens(tokenizer: Any, word: str) -> list[str]:
    """The tokens CLIP reads for `word`, without the begin/end markers."""
    specials = set(tokenizer.all_special_ids)
    ids = [i for i in tokenizer(word, add_special_tokens=True)["input_ids"] if i not in specials]
    return tokenizer.convert_ids_to_tokens(ids)


def _is_common(word: str, words: frozenset[str]) -> bool:
    key = word.lower()
    if key in words:
        return True
    # Plurals: "cats", "boxes", "berries".
    if len(key) > 3 and key.endswith("ies") and key[:-3] + "y" in words:
        return True
    if len(key) > 3 and key.endswith("es") and key[:-2] in words:
        return True
    return len(key) > 3 and key.endswith("s") and key[:-1] in words


class _Checker:
    def __init__(self, tagger_tags: set[str] | None, tokenizer_dir: Path | None) -> None:
        self.tags = None if tagger_tags is None else {normalise(tag) for tag in tagger_tags}
        self.skipped: list[str] = []
        self.tokenizer = None
        try:
            self.words: frozenset[str] | None = common_words()
        except (OSError, UnicodeDecodeError) as exc:   # an install without the package's data files
            self.words = None
            self.skipped.append(f"the list of common English words could not be read ({exc}), so that check "
                                "did not run")
        if tagger_tags is None:
            self.skipped.append("the tagger's tag list was not available, so tags were not compared")
        if tokenizer_dir is None:
            self.skipped.append("the base model's tokenizer was not available, so its vocabulary was not checked")
        elif not Path(tokenizer_dir).expanduser().is_dir():
            self.skipped.append(f"the base model's tokenizer folder {tokenizer_dir} does not exist, so its "
                                "vocabulary was not checked")
        else:
            try:
                self.tokenizer = _tokenizer(str(Path(tokenizer_dir).expanduser().resolve()))
            except Exception as exc:  # noqa: BLE001 - transformers raises many types for a bad folder
                first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
                self.skipped.append(f"the base model's tokenizer in {tokenizer_dir} could not be loaded "
                                    f"({first}), so its vocabulary was not checked")
            else:
                # A test or toy model's vocabulary knows a few hundred words: "not one of them" says
                # nothing about what a real CLIP (49,408 entries) already means by the word.
                size = len(self.tokenizer)
                if size < MIN_REAL_VOCABULARY:
                    self.tokenizer = None
                    self.skipped.append(f"the base model's tokenizer has only {size:,} entries (a test or toy "
                                        f"vocabulary, not CLIP's 49,408), so what the word means to a real "
                                        "model was not checked")

    def problems(self, trigger: str) -> list[str]:
        found: list[str] = []
        key = normalise(trigger)
        if self.tags is not None and key in self.tags:
            found.append(f"“{trigger}” is a tag the tagger already writes (“{key}”): other captions use it for "
                         "something else, so the character and that tag would pull on the same word.")
        if self.tokenizer is not None:
            tokens = clip_tokens(self.tokenizer, trigger)
            if len(tokens) == 1:
                found.append(f"the base model already knows “{trigger}” as one word (CLIP token "
                             f"“{tokens[0]}”): it starts with a meaning of its own and the character can "
                             "drift toward it. A made-up word that the model reads in pieces is safer "
                             "(“Xing” drifted, “XingBar” did not).")
        if self.words is not None and _is_common(trigger, self.words):
            found.append(f"“{trigger}” is an everyday English word: prompts that mean the ordinary word would "
                         "call up the character, and the word's meaning leaks into the LoRA.")
        return found


def _base(trigger: str) -> str:
    """The trigger's letters and digits, parts after the first capitalised ("blue_hair" → "blueHair")."""
    parts = [part for part in re.split(r"[\W_]+", trigger) if part]
    if not parts:
        return ""
    return parts[0] + "".join(part[:1].upper() + part[1:] for part in parts[1:])


def _candidates(trigger: str) -> list[str]:
    base = _base(trigger)
    singles = list(SYLLABLES)
    pairs = [a + b.lower() for a in SYLLABLES for b in SYLLABLES if a != b]
    out: list[str] = []
    for ending in singles + pairs:
        stem = base[: max(0, naming.TRIGGER_MAX - len(ending))]
        candidate = stem + ending
        if candidate.lower() != trigger.lower() and candidate not in out:
            out.append(candidate)
    return out


def check_trigger(trigger: str, *, tagger_tags: set[str] | None,
                  tokenizer_dir: Path | None) -> CollisionReport:
    """Warn when the trigger already means something (see the module doc). Raises
    engine.errors.Invalid when it is not a usable trigger at all (empty, commas, spaces, too long)."""
    trigger = naming.trigger_word(trigger)
    checker = _Checker(tagger_tags, tokenizer_dir)
    problems = checker.problems(trigger)
    suggestion = None
    if problems:
        suggestion = next((c for c in _candidates(trigger) if not checker.problems(c)), None)
    return CollisionReport(trigger, problems, suggestion, not problems, checker.skipped)
