"""`lorabake curate …`: the curation operations from the command line, on the same engine calls as
the Discord buttons and commands. Every action prints JSON with --json."""
from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from bot.cli_args import ROW_ID
from engine.curation.ops import split_tags
from engine.facade import Engine
from engine.records import Actor


def add_parser(verbs: Any, common: argparse.ArgumentParser, inner: argparse.ArgumentParser) -> None:
    actions = verbs.add_parser("curate", parents=[common], help="curate a project's captions").add_subparsers(
        dest="action", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, parents=[inner], help=help_text)
        parser.add_argument("project")
        return parser

    action("show", "tag counts, with the tags that look like the character's fixed traits") \
        .add_argument("--reg", action="store_true", help="the regularization set")
    action("remove", "remove tags from every caption").add_argument("tags", nargs="+")
    replace = action("replace", "search and replace tags")
    replace.add_argument("--search", required=True, help="comma-separated tags to look for")
    replace.add_argument("--replace", default="", help="comma-separated tags to put instead (empty: delete)")
    replace.add_argument("--mode", choices=("or", "and"), default="or")
    replace.add_argument("--make-trigger", action="store_true", help="the new tag becomes the trigger word")
    action("trigger", "set a new trigger word").add_argument("trigger")
    action("check-trigger", "does the trigger word already mean something?")
    action("dedupe", "remove repeated tags within each caption")
    action("sort", "sort each caption's tags (trigger stays first)")
    edit = action("edit", "replace one picture's caption")
    edit.add_argument("image_id", type=ROW_ID)
    edit.add_argument("text")
    action("undo", "undo the last change")
    action("redo", "redo the last undone change")
    action("export", "write a zip in the kohya folder layout").add_argument("--repeats", type=int, default=10)


async def run(engine: Engine, actor: Actor, args: argparse.Namespace) -> tuple[Any, str]:
    """(JSON-able data, text) for the chosen action."""
    curation, project = engine.curation, args.project
    handlers: dict[str, Callable[[], Awaitable[Any]]] = {
        "remove": lambda: curation.remove_tags(actor, project, args.tags),
        "replace": lambda: curation.replace_tags(actor, project, split_tags(args.search), split_tags(args.replace),
                                                 mode=args.mode, make_trigger=args.make_trigger),
        "dedupe": lambda: curation.remove_duplicates(actor, project),
        "sort": lambda: curation.sort_tags(actor, project),
        "edit": lambda: curation.edit_caption(actor, project, args.image_id, args.text),
        "undo": lambda: curation.undo(actor, project),
        "redo": lambda: curation.redo(actor, project),
    }
    if args.action in handlers:
        result = await handlers[args.action]()
        return asdict(result), result.description
    if args.action == "show":
        view = await curation.view(actor, project, "reg" if args.reg else "train")
        rows = [{"tag": s.tag, "count": s.count, "share": s.share, "suggested": s.tag in view.suggested}
                for s in view.stats]
        text = "\n".join(f"{'*' if r['suggested'] else ' '} {r['count']:5d} {r['share']:6.1%}  {r['tag']}"
                         for r in rows)
        return {"trigger": view.trigger, "images": view.images, "tags": rows}, \
            (text or "no captions yet") + "\n(* = probably the character's fixed looks: consider removing)"
    if args.action in ("trigger", "check-trigger"):
        if args.action == "trigger":
            result, check = await curation.set_trigger(actor, project, args.trigger)
            head = result.description
        else:
            check, head = await curation.check_trigger(actor, project), "trigger checked"
        return asdict(check), "\n".join([head, *check.lines()])
    summary = await curation.export(actor, project, args.repeats)
    return {**asdict(summary), "path": str(summary.path)}, (
        f"wrote {summary.path} ({summary.images} pictures, {summary.reg_images} reg pictures, "
        f"{summary.uncaptioned} without captions)")
