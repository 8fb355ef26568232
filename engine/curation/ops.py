"""Caption curation ops: pure functions over comma-separated tag lists (no I/O).

An op sees one picture set of a project (a CaptionSet: 'train' = dataset/, 'reg' = reg/) and returns
an Outcome: the captions it changes, the project's trigger word afterwards, and one line saying what
it did. Ops are dataclasses that round-trip through JSON (`to_dict` / `op_from_dict`), so the history
can say which op made each entry.

Rules every op keeps:
- Tags compare as the tagger writes them: ignoring case, and `_` equal to a space in tags longer than
  3 characters (`blue_hair` is `blue hair`; the emoticon `^_^` is not `^ ^`).
- Every training caption an op writes starts with the trigger word (kohya keeps the first tag in place
  when it shuffles captions, so the trigger must be first). Captions an op does not change are left
  as they are; SetTrigger puts the trigger first in all of them.
- Only SetTrigger and EditCaption give a picture without a caption one (SetTrigger: the trigger alone,
  so an untagged training picture still trains as the character); the other ops skip such pictures.
- Reg (class) captions never get the trigger: trigger ops refuse the reg set.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

from engine import naming
from engine.errors import Invalid
from engine.tagging.tags import underscore_rule

TRAIN, REG = "train", "reg"
SET_NAMES = {TRAIN: "training", REG: "class (reg)"}
# CLIP reads 77 token positions, two of which are its begin and end markers.
CLIP_MAX_TOKENS = 75
TokenCounter = Callable[[str], int]  # tokens a text takes, without the begin/end markers


# --- tags -----------------------------------------------------------------------------------------


def split_tags(text: str) -> list[str]:
    """The tags of a caption, stripped (inner runs of spaces made one), empty ones dropped."""
    return [tag for tag in (" ".join(part.split()) for part in text.split(",")) if tag]


def join_tags(tags: Iterable[str]) -> str:
    return ", ".join(tags)


def tag_key(tag: str) -> str:
    """How two tags are compared: see the module's rules."""
    return underscore_rule(" ".join(tag.split())).lower()


def clean_tags(values: Iterable[str]) -> tuple[str, ...]:
    """Tags a member typed: each value may itself hold several comma-separated tags; repeats dropped."""
    seen: set[str] = set()
    result: list[str] = []
    for value in values:
        for tag in split_tags(value):
            if tag_key(tag) not in seen:
                seen.add(tag_key(tag))
                result.append(tag)
    return tuple(result)


def validate_trigger(value: str, *, count_tokens: TokenCounter | None = None,
                     max_tokens: int | None = CLIP_MAX_TOKENS) -> str:
    """The cleaned trigger word, or Invalid. The token check runs only when the caller can count
    (it passes the text encoder's tokenizer); max_tokens None turns it off."""
    value = naming.trigger_word(value)
    if count_tokens is not None and max_tokens is not None:
        tokens = count_tokens(value)
        if tokens > max_tokens:
            raise Invalid(f"trigger word {value!r} takes {tokens} tokens, more than the {max_tokens} the text "
                          "encoder reads: pick a shorter word")
    return value


# --- what an op sees and returns ------------------------------------------------------------------


@dataclass(frozen=True)
class CaptionSet:
    kind: str                              # 'train' | 'reg'
    trigger: str                           # the project's trigger word now
    captions: Mapping[int, str | None]     # every picture of the set: image id → caption (None: none yet)
    count_tokens: TokenCounter | None = None
    max_tokens: int | None = CLIP_MAX_TOKENS

    @property
    def set_name(self) -> str:
        return SET_NAMES[self.kind]

    def valid_trigger(self, value: str) -> str:
        return validate_trigger(value, count_tokens=self.count_tokens, max_tokens=self.max_tokens)


@dataclass(frozen=True)
class Outcome:
    captions: dict[int, str]   # only the pictures whose caption changes → their new caption
    trigger: str               # the project's trigger word afterwards
    description: str           # one line for the member


# --- the ops --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    name: ClassVar[str]

    def apply(self, current: CaptionSet) -> Outcome:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.name, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Op:
        return cls(**{key: value for key, value in data.items() if key != "op"})


@dataclass(frozen=True)
class SetTrigger(Op):
    """The new trigger first in every training caption; the old one removed wherever it appears."""
    new: str
    name: ClassVar[str] = "set_trigger"

    def apply(self, current: CaptionSet) -> Outcome:
        _training_only(current, "the trigger word")
        new = current.valid_trigger(self.new)
        drop = {tag_key(current.trigger), tag_key(new)}
        changed: dict[int, str] = {}
        for image_id, text in current.captions.items():
            old = split_tags(text) if text is not None else None
            tags = [new] + [tag for tag in old or () if tag_key(tag) not in drop]
            if tags != old:
                changed[image_id] = join_tags(tags)
        if new == current.trigger:
            what = f"{new} is the trigger word"
        else:
            what = f"the trigger word is now {new} (was {current.trigger})"
        where = f"put first in {_count(len(changed), 'caption')}" if changed else "already first in every caption"
        return Outcome(changed, new, f"{what}, {where}")


@dataclass(frozen=True)
class RemoveTags(Op):
    """The tags removed from every caption of the set (the trigger word cannot be removed)."""
    tags: tuple[str, ...]
    name: ClassVar[str] = "remove_tags"

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", clean_tags(self.tags))
        if not self.tags:
            raise Invalid("say which tags to remove")

    def apply(self, current: CaptionSet) -> Outcome:
        keys = {tag_key(tag) for tag in self.tags}
        if current.kind == TRAIN and tag_key(current.trigger) in keys:
            raise Invalid(f"{current.trigger} is the trigger word and stays first in every training caption; "
                          "to change it, set a new trigger word")
        found: set[str] = set()

        def remove(tags: list[str]) -> list[str]:
            kept = [tag for tag in tags if tag_key(tag) not in keys]
            found.update(tag_key(tag) for tag in tags if tag_key(tag) in keys)
            return kept

        changed = _rewrite(current, remove)
        if not found:
            return Outcome({}, current.trigger, f"no {current.set_name} caption has {_names(self.tags, 'or')}")
        removed = [tag for tag in self.tags if tag_key(tag) in found]
        return Outcome(changed, current.trigger,
                       f"removed {_count(len(removed), 'tag')} ({_names(removed)}) "
                       f"from {_count(len(changed), 'caption')}")


@dataclass(frozen=True)
class ReplaceTags(Op):
    """In captions with any ('or') or all ('and') of the search tags: those removed, the replacement
    tags put where the first of them was (none already there twice). No replacement = delete.
    make_trigger: the single replacement tag becomes the trigger word, as SetTrigger does it."""
    search: tuple[str, ...]
    replace: tuple[str, ...] = ()
    mode: Literal["or", "and"] = "or"
    make_trigger: bool = False
    name: ClassVar[str] = "replace_tags"

    def __post_init__(self) -> None:
        object.__setattr__(self, "search", clean_tags(self.search))
        object.__setattr__(self, "replace", clean_tags(self.replace))
        if not self.search:
            raise Invalid("say which tags to search for")
        if self.mode not in ("or", "and"):
            raise Invalid(f"search mode {self.mode!r} is unknown: use 'or' (any of the tags) or 'and' (all of them)")
        if self.make_trigger and len(self.replace) != 1:
            raise Invalid("to make the replacement the trigger word, replace with exactly one tag")

    def apply(self, current: CaptionSet) -> Outcome:
        keys = [tag_key(tag) for tag in self.search]
        if current.kind == TRAIN and tag_key(current.trigger) in keys:
            raise Invalid(f"{current.trigger} is the trigger word: set a new trigger word instead of replacing it")
        if self.make_trigger:
            _training_only(current, "the trigger word")
            current.valid_trigger(self.replace[0])  # refuse before changing anything

        def replace(tags: list[str]) -> list[str] | None:
            hits = [index for index, tag in enumerate(tags) if tag_key(tag) in keys]
            if not hits or (self.mode == "and" and not set(keys) <= {tag_key(tags[index]) for index in hits}):
                return None
            kept = [tag for tag in tags if tag_key(tag) not in keys]
            present = {tag_key(tag) for tag in kept}
            insert = [tag for tag in self.replace if tag_key(tag) not in present]
            at = hits[0]  # the first hit's place: every tag before it is kept
            return kept[:at] + insert + kept[at:]

        changed = _rewrite(current, replace)
        searched = _names(self.search, self.mode)
        if not changed:
            description = f"no {current.set_name} caption has {searched}"
        elif self.replace:
            description = f"replaced {searched} with {_names(self.replace)} in {_count(len(changed), 'caption')}"
        else:
            description = f"deleted {searched} from {_count(len(changed), 'caption')}"
        if not self.make_trigger:
            return Outcome(changed, current.trigger, description)
        # The replacement, then the whole set re-triggered: one step, so one undo.
        replaced = {**current.captions, **changed}
        retriggered = SetTrigger(self.replace[0]).apply(
            CaptionSet(current.kind, current.trigger, replaced, current.count_tokens, current.max_tokens))
        final = {image_id: text for image_id, text in {**changed, **retriggered.captions}.items()
                 if _differs(current.captions[image_id], text)}
        return Outcome(final, retriggered.trigger, f"{description}; {retriggered.description}")


@dataclass(frozen=True)
class RemoveDuplicates(Op):
    """A tag written twice in one caption is kept once (where it first appears)."""
    name: ClassVar[str] = "remove_duplicates"

    def apply(self, current: CaptionSet) -> Outcome:
        removed = 0

        def dedupe(tags: list[str]) -> list[str]:
            nonlocal removed
            kept = list(clean_tags(tags))
            removed += len(tags) - len(kept)
            return kept

        changed = _rewrite(current, dedupe)
        if not removed:
            return Outcome(changed, current.trigger, f"no {current.set_name} caption has a tag twice")
        return Outcome(changed, current.trigger,
                       f"removed {_count(removed, 'duplicate tag')} from {_count(len(changed), 'caption')}")


@dataclass(frozen=True)
class SortTags(Op):
    """Tags in alphabetical order; in training captions the trigger word stays first."""
    name: ClassVar[str] = "sort_tags"

    def apply(self, current: CaptionSet) -> Outcome:
        trigger = tag_key(current.trigger) if current.kind == TRAIN else None
        changed = _rewrite(current, lambda tags: sorted(tags, key=lambda tag: (tag_key(tag) != trigger,
                                                                              tag_key(tag), tag)))
        if not changed:
            return Outcome(changed, current.trigger, f"every {current.set_name} caption is already sorted")
        return Outcome(changed, current.trigger, f"sorted the tags of {_count(len(changed), 'caption')}")


@dataclass(frozen=True)
class EditCaption(Op):
    """One picture's caption replaced by what the member wrote; a training caption gets the trigger
    word back first if the member dropped or moved it."""
    image_id: int
    text: str
    name: ClassVar[str] = "edit_caption"

    def apply(self, current: CaptionSet) -> Outcome:
        if self.image_id not in current.captions:
            raise Invalid(f"picture #{self.image_id} is not in this project's {current.set_name} pictures")
        tags = split_tags(self.text)
        finished = _finish(tags, current)
        text = join_tags(finished)
        changed = {self.image_id: text} if _differs(current.captions[self.image_id], text) else {}
        description = (f"edited the caption of picture #{self.image_id}" if changed
                       else f"the caption of picture #{self.image_id} is unchanged")
        if finished != tags:
            description += f" (the trigger word {current.trigger} stays first: put it back)"
        return Outcome(changed, current.trigger, description)


OPS: dict[str, type[Op]] = {op.name: op for op in (SetTrigger, RemoveTags, ReplaceTags, RemoveDuplicates,
                                                   SortTags, EditCaption)}


def op_from_dict(data: Mapping[str, Any]) -> Op:
    try:
        return OPS[data["op"]].from_dict(data)
    except KeyError:
        raise Invalid(f"unknown caption op {data.get('op')!r}: known ops are {', '.join(OPS)}") from None


# --- helpers --------------------------------------------------------------------------------------


def _rewrite(current: CaptionSet, change: Callable[[list[str]], list[str] | None]) -> dict[int, str]:
    """Runs `change` over each captioned picture's tags (None: leave that caption alone); returns the
    captions whose tags really change (reformatting alone, "a,b" → "a, b", is no change)."""
    changed: dict[int, str] = {}
    for image_id, text in current.captions.items():
        if text is None:
            continue
        old = split_tags(text)
        new = change(old)
        # Untouched captions stay as they are, even a training caption that lacks the trigger.
        if new is None or new == old:
            continue
        new = _finish(new, current)
        if new != old:
            changed[image_id] = join_tags(new)
    return changed


def _differs(old: str | None, new: str) -> bool:
    return old is None or split_tags(old) != split_tags(new)


def _finish(tags: list[str], current: CaptionSet) -> list[str]:
    """A training caption starts with the trigger word, once."""
    if current.kind != TRAIN:
        return tags
    key = tag_key(current.trigger)
    return [current.trigger] + [tag for tag in tags if tag_key(tag) != key]


def _training_only(current: CaptionSet, what: str) -> None:
    if current.kind != TRAIN:
        raise Invalid(f"{what} belongs to the training captions only: class (reg) captions never carry it, "
                      "so the LoRA keeps the class general")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _names(tags: Iterable[str], mode: str = "and", shown: int = 5) -> str:
    tags = list(tags)
    joiner = " or " if mode == "or" else " and "
    names = tags[:shown] + ([f"{len(tags) - shown} more"] if len(tags) > shown else [])
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + joiner + names[-1]
