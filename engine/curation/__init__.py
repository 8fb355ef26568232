"""Caption curation (DESIGN §1 step 4): the trigger word first, tags removed, searched and replaced,
de-duplicated, sorted, single captions edited — each step undoable, across restarts.

    ops      pure functions and op dataclasses over tag lists
    history  the Curation service: ops on a project's captions (database, then .txt files), undo/redo
"""
from __future__ import annotations

from engine.curation.history import Curation, HistoryEntry, OpResult
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

__all__ = [
    "CLIP_MAX_TOKENS", "CaptionSet", "Curation", "EditCaption", "HistoryEntry", "Op", "OpResult", "Outcome",
    "RemoveDuplicates", "RemoveTags", "ReplaceTags", "SetTrigger", "SortTags", "join_tags", "op_from_dict",
    "split_tags", "validate_trigger",
]
