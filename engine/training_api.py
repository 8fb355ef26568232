"""Training as the bot and the CLI use it: a plan the member can read before anything runs, then a
queued "train" job. The pending plan behind a Start button lives in the database, so the button
works after a restart."""
from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import Invalid, NotFound
from engine.models import resolve_base_model
from engine.records import Actor, Job
from engine.training.kohya_format import epoch_number
from engine.training.options import TrainOptions, apply_overrides, preset
from engine.training.plan import TrainPlan, make_plan, refuse_if_too_long
from storage import images as image_rows
from storage import settings as setting_rows
from storage.artifacts import ArtifactRow

if TYPE_CHECKING:
    from engine.facade import Engine


@dataclass(frozen=True)
class PlannedTraining:
    project: str
    family: str
    options: TrainOptions
    plan: TrainPlan
    uncaptioned: int


class TrainingAPI:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def plan(self, actor: Actor, project: str, overrides: dict[str, str]) -> PlannedTraining:
        engine = self._engine
        row = await engine.own_project_row(actor, project)
        pictures = await image_rows.list_for_project(engine._db, row.id)
        train = [p for p in pictures if p.kind == "train"]
        if not train:
            raise Invalid(f"{row.name} has no training pictures yet: add some with /lora upload")
        captions = await image_rows.captions(engine._db, row.id, "train")
        info = await asyncio.to_thread(resolve_base_model, engine.config.models.base)
        options = apply_overrides(preset(info.family), overrides)
        plan = make_plan(options, train_images=len(train), reg_images=len(pictures) - len(train))
        refuse_if_too_long(plan, options.max_train_steps_cap)
        return PlannedTraining(row.name, info.family, options, plan, len(train) - len(captions))

    async def start(self, actor: Actor, project: str, overrides: dict[str, str]) -> Job:
        planned = await self.plan(actor, project, overrides)
        row = await self._engine.own_project_row(actor, project)
        params = {"base_model": self._engine.config.models.base, "options": planned.options.to_dict(),
                  "trigger": row.trigger, "name": row.name}
        return await self._engine.enqueue(actor, "train", row.name, params)

    async def lora_file(self, actor: Actor, project: str, epoch: int | None = None) -> tuple[ArtifactRow, Path]:
        """The trained file to hand over: the final LoRA, or one epoch's (only files still on disk)."""
        row = await self._engine.own_project_row(actor, project)
        found: dict[int | None, tuple[ArtifactRow, Path]] = {}
        for artifact in await self._engine.artifacts(actor, row.name):
            path = await self._engine.artifact_path(artifact)
            if artifact.kind == "lora" and path.is_file():
                found[None] = (artifact, path)
            elif artifact.kind == "lora-epoch" and path.is_file():
                found[epoch_number(path, row.name)] = (artifact, path)
        if epoch in found:
            return found[epoch]
        if not found:
            raise NotFound(f"{row.name} has no trained LoRA yet: start one with /lora train")
        epochs = ", ".join(str(n) for n in sorted(k for k in found if k is not None)) or "none"
        raise NotFound(f"{row.name} has no file for epoch {epoch}: the kept epochs are {epochs}")

    async def samples(self, actor: Actor, project: str, *, steps: int = 28, size: int = 512) -> Job:
        """Queues sample grids and scores for every kept epoch of the project's LoRA."""
        engine = self._engine
        row = await engine.own_project_row(actor, project)
        frequent = [s.tag for s in await engine.tag_stats(actor, row.name) if s.share >= 0.5]
        pruned = await engine.curation.pruned_tags(row.id)
        tagger = engine.config.tagger
        params = {
            "base_model": engine.config.models.base, "name": row.name, "trigger": row.trigger,
            "class_name": row.class_name, "character_tags": pruned + [t for t in frequent if t not in pruned],
            "tagger": {"model": tagger.model, "cache_dir": tagger.cache_dir,
                       "general_threshold": tagger.general_threshold,
                       "character_threshold": tagger.character_threshold, "blacklist": tagger.blacklist},
            "weights": [0.0, 0.4, 0.6, 0.8, 1.0], "seeds": [42], "steps": steps, "size": [size, size],
            "max_bytes": 8 * 2**20, "max_leak": 0.15,
        }
        return await engine.enqueue(actor, "samples", row.name, params)

    async def latest_samples(self, actor: Actor, project: str) -> tuple[dict, list[Path]]:
        """The last samples run's report (scores, recommendation) and its grid files."""
        row = await self._engine.own_project_row(actor, project)
        folder = self._engine.layout.project(row.user_id, row.dir_name).samples
        report_path = folder / "scores.json"
        if not report_path.is_file():
            raise NotFound(f"{row.name} has no samples yet: train it, then run /lora samples")
        report = json.loads(report_path.read_text(encoding="utf-8"))
        return report, [folder / name for name in report["grids"] if (folder / name).is_file()]

    async def remember(self, actor: Actor, project: str, overrides: dict[str, str]) -> str:
        """Keeps a shown plan for its Start button; returns the token the button carries."""
        row = await self._engine.own_project_row(actor, project)
        token = secrets.token_hex(6)
        await setting_rows.put(self._engine._db, f"train.pending.{token}",
                               json.dumps({"user_id": actor.user_id, "project_id": row.id, "overrides": overrides}))
        return token

    async def start_remembered(self, actor: Actor, token: str) -> Job:
        raw = await setting_rows.get(self._engine._db, f"train.pending.{token}")
        pending = json.loads(raw) if raw else None
        if pending is None or pending["user_id"] != actor.user_id:
            raise NotFound("this training plan is not yours or no longer exists: run /lora train again")
        row = await self._engine.own_project_row_by_id(actor, pending["project_id"])
        job = await self.start(actor, row.name, pending["overrides"])
        await setting_rows.put(self._engine._db, f"train.pending.{token}", "null")  # one start per plan
        return job
