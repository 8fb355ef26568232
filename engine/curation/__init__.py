"""Caption curation (DESIGN §1 step 4): the trigger word first, tags removed, searched and replaced,
de-duplicated, sorted, single captions edited — each step undoable, across restarts.

    ops       pure functions and op dataclasses over tag lists
    service   the Curation service: ops on a project's captions (database, then .txt files), undo/redo
    suggest   which tags look like the character's fixed traits
    collision does the trigger word already mean something?
    export    the dataset as a zip in kohya's folder layout
"""
from __future__ import annotations

from engine.curation.ops import (
    CLIP_MAX_TOKENS,
    CaptionSet,
    EditCaption,
    Op,
    Outcome,
    RemoveDuplicates,
    RemoveTags,
    ReplaceTags,
    SetTrigger,
    SortTags,
    join_tags,
    op_from_dict,
    split_tags,
    validate_trigger,
)
from engine.curation.service import Curation, HistoryEntry, OpResult

__all__ = [
    "CLIP_MAX_TOKENS", "CaptionSet", "Curation", "EditCaption", "HistoryEntry", "Op", "OpResult", "Outcome",
    "RemoveDuplicates", "RemoveTags", "ReplaceTags", "SetTrigger", "SortTags", "join_tags", "op_from_dict",
    "split_tags", "validate_trigger",
]
