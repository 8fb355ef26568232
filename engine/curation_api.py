"""Tag curation as the bot and the CLI use it: every call finds the actor's own project first, then
hands over to engine.curation (ops with undo history, trait suggestions, trigger checks, export)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.core import Core
from engine.curation.collision import CollisionReport, check_trigger
from engine.curation.export import ExportSummary, export_project
from engine.curation.ops import EditCaption, RemoveDuplicates, RemoveTags, ReplaceTags, SetTrigger, SortTags
from engine.curation.service import Curation, OpResult
from engine.curation.suggest import Suggestion, suggest_traits
from engine.errors import Invalid
from engine.records import Actor
from engine.tagging import TaggerError
from engine.tagging.analyze import TagCount
from engine.tagging.model import load_tags
from engine.tagging.tags import underscore_rule
from storage import curation as curation_rows
from storage import images as image_rows
from storage.projects import ProjectRow


@dataclass(frozen=True)
class CurationView:
    """What the curation screen shows: the tag list, which tags look like the character's fixed traits,
    and which ones the member has picked for removal but not applied yet."""

    project_id: int
    project: str
    trigger: str
    kind: str
    stats: list[TagCount]
    suggested: dict[str, Suggestion]
    selected: list[str]
    images: int


class CurationAPI:
    def __init__(self, core: Core) -> None:
        self._core = core
        self._db = core.db
        self._service = Curation(core.db, core.layout)

    async def sync_files(self) -> int:
        return await self._service.sync_files()

    async def view(self, actor: Actor, project: str | int, kind: str = "train") -> CurationView:
        row = await self._row(actor, project)
        stats = await self._core.tag_stats(row, kind)
        suggested = {s.tag: s for s in suggest_traits(stats)} if kind == "train" else {}
        images = len(await image_rows.list_for_project(self._db, row.id, kind))
        return CurationView(row.id, row.name, row.trigger, kind, stats, suggested,
                            await self._selected(row.id, kind), images)

    async def toggle(self, actor: Actor, project: str | int, kind: str, tag: str) -> list[str]:
        """Marks or unmarks a tag for removal; kept in the database so any click, after any restart, sees it."""
        row = await self._row(actor, project)
        selected = await self._selected(row.id, kind)
        selected = [t for t in selected if t != tag] if tag in selected else selected + [tag]
        await curation_rows.set_marked_tags(self._db, row.id, kind, selected)
        return selected

    async def apply_selection(self, actor: Actor, project: str | int, kind: str = "train") -> OpResult:
        row = await self._row(actor, project)
        selected = await self._selected(row.id, kind)
        if not selected:
            raise Invalid("no tags are marked yet: click the tags that describe the character's fixed looks first")
        result = await self._service.apply(row, RemoveTags(selected), kind)
        await curation_rows.set_marked_tags(self._db, row.id, kind, [])
        await curation_rows.add_pruned_tags(self._db, row.id, selected)
        return result

    async def remove_tags(self, actor: Actor, project: str, tags: list[str], kind: str = "train") -> OpResult:
        row = await self._row(actor, project)
        result = await self._service.apply(row, RemoveTags(tags), kind)
        await curation_rows.add_pruned_tags(self._db, row.id, tags)
        return result

    async def pruned_tags(self, project_id: int) -> list[str]:
        """Tags the member removed from the training captions: the character's fixed looks, which the
        trigger word should now bring back (the sample scores look for them)."""
        return await curation_rows.pruned_tags(self._db, project_id)

    async def replace_tags(self, actor: Actor, project: str, search: list[str], replace: list[str], *,
                           mode: str = "or", make_trigger: bool = False, kind: str = "train") -> OpResult:
        if mode not in ("or", "and"):
            raise Invalid("mode must be 'or' (captions with any of the tags) or 'and' (captions with all of them)")
        op = ReplaceTags(search, replace, mode, make_trigger)
        return await self._service.apply(await self._row(actor, project), op, kind)

    async def set_trigger(self, actor: Actor, project: str, trigger: str) -> tuple[OpResult, CollisionReport]:
        row = await self._row(actor, project)
        counter = token_counter(local_tokenizer_dir(self._core.config.models.base))
        result = await self._service.apply(row, SetTrigger(trigger), "train", count_tokens=counter)
        return result, await self.check_trigger(actor, row.name, result.trigger)

    async def check_trigger(self, actor: Actor, project: str, trigger: str | None = None) -> CollisionReport:
        row = await self._row(actor, project)
        tags = {s.tag for s in await self._core.tag_stats(row, "train")}
        config = self._core.config
        known = known_tagger_tags(config.tagger.model, config.tagger.cache_dir) | tags
        return check_trigger(trigger or row.trigger, tagger_tags=known,
                             tokenizer_dir=local_tokenizer_dir(config.models.base))

    async def remove_duplicates(self, actor: Actor, project: str, kind: str = "train") -> OpResult:
        return await self._service.apply(await self._row(actor, project), RemoveDuplicates(), kind)

    async def sort_tags(self, actor: Actor, project: str, kind: str = "train") -> OpResult:
        return await self._service.apply(await self._row(actor, project), SortTags(), kind)

    async def edit_caption(self, actor: Actor, project: str | int, image_id: int, text: str) -> OpResult:
        row = await self._row(actor, project)
        image = await image_rows.get(self._db, row.id, image_id)
        if image is None:
            raise Invalid("that picture is no longer in the project")
        return await self._service.apply(row, EditCaption(image_id, text), image.kind)

    async def undo(self, actor: Actor, project: str | int) -> OpResult:
        return await self._service.undo(await self._row(actor, project))

    async def redo(self, actor: Actor, project: str | int) -> OpResult:
        return await self._service.redo(await self._row(actor, project))

    async def export(self, actor: Actor, project: str, repeats: int = 10) -> ExportSummary:
        row = await self._row(actor, project)
        folder = self._core.folders(row)
        out = folder.output / f"{row.name}-dataset.zip"
        return export_project(folder.root, name=row.name, trigger=row.trigger, class_name=row.class_name,
                              repeats=repeats, out=out)

    async def _row(self, actor: Actor, project: str | int) -> ProjectRow:
        row = await self._core.own_project(actor, project)
        if await self._core.active_jobs(row, "tag"):
            # The job would overwrite these edits with fresh tagger output when it finishes.
            raise Invalid(f"{row.name} is being tagged right now: curate once the tagging job has finished")
        return row

    async def _selected(self, project_id: int, kind: str) -> list[str]:
        return await curation_rows.marked_tags(self._db, project_id, kind)


def known_tagger_tags(model: str, cache_dir: str) -> set[str]:
    """The tags the configured tagger can write, as captions spell them; empty until the tagger's files
    are on this machine (never downloads: a trigger check must not wait on the network)."""
    folder = Path(model).expanduser()
    csv_path: Path | None = (folder / "selected_tags.csv" if folder.is_dir()
                             else _cached(model, "selected_tags.csv", cache_dir))
    if csv_path is None or not csv_path.is_file():
        return set()
    try:
        return {underscore_rule(name) for name in load_tags(csv_path).names}
    except TaggerError:
        return set()


def local_tokenizer_dir(base: str) -> Path | None:
    """The base model's CLIP tokenizer folder, when the base model is a diffusers folder or is cached."""
    folder = Path(base).expanduser()
    if folder.is_dir():
        return folder / "tokenizer" if (folder / "tokenizer").is_dir() else None
    vocab = _cached(base, "tokenizer/vocab.json", "")
    return vocab.parent if vocab else None


def token_counter(tokenizer_dir: Path | None) -> Callable[[str], int] | None:
    """How many CLIP tokens a text takes with the base model's tokenizer (None: no tokenizer here)."""
    if tokenizer_dir is None:
        return None
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    return lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)


def _cached(repo_id: str, filename: str, cache_dir: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir or None)
    except ValueError:  # not a repo id
        return None
    return Path(found) if isinstance(found, str) else None

