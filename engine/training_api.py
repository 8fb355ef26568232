"""Training as the bot and the CLI use it: a plan the member can read before anything runs, then a
queued "train" job. The pending plan behind a Start button lives in the database, so the button
works after a restart."""
from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

from engine.core import Core, choose_family
from engine.errors import Invalid, NotFound, SetupError
from engine.models import resolve_base_model
from engine.models.base import native_resolution
from engine.records import Actor, Job
from engine.samples.report import SampleResults, read_report, sample_results, samples_match
from engine.training import memory
from engine.training.captions import example_captions
from engine.training.lora_files import epoch_files, epoch_number, trained_family
from engine.training.options import TrainOptions, apply_overrides, preset
from engine.training.plan import TrainPlan, make_plan, refuse_if_too_long
from storage import images as image_rows
from storage import jobs as job_rows
from storage import training_plans as plan_rows
from storage.artifacts import ArtifactRow
from storage.projects import ProjectRow

_FAMILY_NAMES = {"sd15": "SD 1.x", "sdxl": "SDXL"}


def _step_work(options: TrainOptions) -> float:
    """What a step's time grows with: the pixels of its batch, and a little the size of the LoRA network."""
    return options.resolution ** 2 * options.batch_size * memory.STEP_COST[memory.network_kind(options)]


@dataclasses.dataclass(frozen=True)
class PlannedTraining:
    project: str
    family: str
    options: TrainOptions
    plan: TrainPlan
    uncaptioned: int
    example_captions: dict[str, str]    # "train" (and "reg" with reg pictures): one caption as trained


@dataclasses.dataclass(frozen=True)
class LoraFile:
    artifact: ArtifactRow
    path: Path
    epoch: int | None                   # None: the final file
    recommended_weight: float | None    # set when this is the epoch the samples recommend

    @property
    def description(self) -> str:
        """Which file this is, in the words the member reads next to it."""
        if self.recommended_weight is not None:
            return f"epoch {self.epoch}, the recommended one (weight {self.recommended_weight:g})"
        return "the final file" if self.epoch is None else f"epoch {self.epoch}"


def _hashes(found: dict[int | None, tuple[ArtifactRow, Path]]) -> dict[int, str]:
    return {epoch: artifact.sha256 for epoch, (artifact, _path) in found.items() if epoch is not None}


class TrainingAPI:
    def __init__(self, core: Core, pruned_tags: Callable[[int], Awaitable[list[str]]]) -> None:
        """`pruned_tags(project_id)`: the tags the member pruned (curation's), which the sample scores look for."""
        self._core = core
        self._pruned_tags = pruned_tags

    async def plan(self, actor: Actor, project: str, overrides: dict[str, str], *,
                   family: str | None = None) -> PlannedTraining:
        """`family` picks the base model from [models] ("sd15" / "sdxl"; None = default_family)."""
        core = self._core
        family = choose_family(family, core.config.models.default_family)
        row = await core.own_project(actor, project)
        pictures = await image_rows.list_for_project(core.db, row.id)
        train = [p for p in pictures if p.kind == "train"]
        if not train:
            raise Invalid(f"{row.name} has no training pictures yet: add some with /lora upload")
        captions = await image_rows.captions(core.db, row.id)
        models = core.config.models
        info = await asyncio.to_thread(resolve_base_model, models.spec_for(family),
                                       prediction=models.prediction_for(family))
        if info.family != family:
            raise SetupError(f"[models] {family} names {info.spec}, which is an {_FAMILY_NAMES[info.family]} "
                             f"model, not {_FAMILY_NAMES[family]}: the server owner should set [models] {family} "
                             f"to an {_FAMILY_NAMES[family]} model")
        options = dataclasses.replace(apply_overrides(preset(info.family, info.resolution), overrides),
                                      max_train_steps_cap=core.config.training.max_steps)
        seconds, source = await self._seconds_per_step(options)
        plan = make_plan(options, train_images=len(train), reg_images=len(pictures) - len(train),
                         seconds_per_step=seconds, speed_source=source)
        refuse_if_too_long(plan, options.max_train_steps_cap)
        reg = [p for p in pictures if p.kind == "reg"]
        # The first picture of each folder in the trainer's order (file names), as the model will read it.
        examples = example_captions(
            captions.get(min(train, key=lambda p: p.filename).id, ""),
            captions.get(min(reg, key=lambda p: p.filename).id, "") if reg else None,
            row.trigger, row.class_name, options.reg_captions)
        uncaptioned = sum(p.id not in captions for p in train)
        return PlannedTraining(row.name, info.family, options, plan, uncaptioned, examples)

    def defaults(self, family: str | None) -> TrainOptions:
        """The options a training starts from: the family's preset at the base model's own resolution, read
        from a local model's configs (a model still to be downloaded gets the family's usual one)."""
        models = self._core.config.models
        family = choose_family(family, models.default_family)
        path = Path(models.spec_for(family)).expanduser()
        return preset(family, native_resolution(path) if path.is_dir() else None)

    async def start(self, actor: Actor, project: str, overrides: dict[str, str], *,
                    family: str | None = None) -> Job:
        planned = await self.plan(actor, project, overrides, family=family)
        row = await self._core.own_project(actor, project)
        models = self._core.config.models
        params = {"base_model": models.spec_for(planned.family), "prediction": models.prediction_for(planned.family),
                  "options": planned.options.to_dict(), "trigger": row.trigger, "class_name": row.class_name,
                  "name": row.name}
        return await self._core.enqueue(actor, "train", row, params)

    async def _seconds_per_step(self, options: TrainOptions) -> tuple[float, str]:
        """How long one step of `options` should take on this server: the newest finished training of the
        same family, scaled by the pixels a step handles; before there is one, the [training] guess."""
        for job in await job_rows.latest_done(self._core.db, "train"):
            past, it_s = job.params.get("options") or {}, (job.result or {}).get("it_s")
            if past.get("family") == options.family and isinstance(it_s, (int, float)) and it_s > 0:
                scale = _step_work(options) / _step_work(TrainOptions.from_saved(past))
                return scale / it_s, f"measured on this server's last {_FAMILY_NAMES[options.family]} training"
        guess = getattr(self._core.config.training, f"{options.family}_seconds_per_step")
        scale = _step_work(options) / _step_work(preset(options.family))
        return guess * scale, "a guess until a training has run on this server"

    def _trained_family(self, row: ProjectRow) -> str:
        """The family the project's LoRA was trained on (the default family when there is no LoRA yet, or
        it does not say)."""
        return trained_family(self._core.folders(row).output, row.name) or self._core.config.models.default_family

    async def _lora_files(self, row: ProjectRow) -> dict[int | None, tuple[ArtifactRow, Path]]:
        """epoch → (artifact, path) of the trained files still on disk; None is the final file."""
        found: dict[int | None, tuple[ArtifactRow, Path]] = {}
        output = self._core.folders(row).output
        for artifact in await self._core.artifacts(row):
            path = await self._core.artifact_path(artifact)
            if path.parent != output:   # an earlier run's, moved aside: its links work, it is not this run's
                continue
            if artifact.kind == "lora" and path.is_file():
                found[None] = (artifact, path)
            elif artifact.kind == "lora-epoch" and path.is_file():
                found[epoch_number(path, row.name)] = (artifact, path)
        return found

    async def lora_file(self, actor: Actor, project: str, epoch: int | None = None) -> LoraFile:
        """The trained file to hand over: one epoch's if asked; else the recommended epoch's when samples of
        the current files exist; else the final LoRA (only files still on disk)."""
        row = await self._core.own_project(actor, project)
        found = await self._lora_files(row)
        if not found:
            raise NotFound(f"{row.name} has no trained LoRA yet: start one with /lora train")
        report = read_report(self._samples_folder(row))
        if epoch is None and report is not None and samples_match(report, _hashes(found)):
            best = report["recommended"]
            if best["epoch"] in found:
                return LoraFile(*found[best["epoch"]], best["epoch"], best["weight"])
        if epoch in found:
            return LoraFile(*found[epoch], epoch, None)
        kept = sorted(k for k in found if k is not None)
        if epoch is None:  # a training that was cancelled or stopped: its last saved epoch
            return LoraFile(*found[kept[-1]], kept[-1], None)
        epochs = ", ".join(str(n) for n in kept) or "none"
        raise NotFound(f"{row.name} has no file for epoch {epoch}: the kept epochs are {epochs}")

    async def samples(self, actor: Actor, project: str, *, follows: int | None = None) -> Job:
        """Queues sample grids and scores for every kept epoch of the project's LoRA ([samples] config).
        `follows`: the job this one was queued after (a training), so front-ends can show it there."""
        core = self._core
        row = await core.own_project(actor, project)
        if not epoch_files(core.folders(row).output, row.name):
            raise Invalid(f"{row.name} has no trained epochs to sample yet: train it first with /lora train")
        sampling, models, family = core.config.samples, core.config.models, self._trained_family(row)
        frequent = [s.tag for s in await core.tag_stats(row) if s.share >= 0.5]
        pruned = await self._pruned_tags(row.id)
        params = {
            "base_model": models.spec_for(family), "prediction": models.prediction_for(family),
            "name": row.name, "trigger": row.trigger, "class_name": row.class_name, "frequent_tags": frequent,
            "pruned_tags": pruned,
            "tagger": core.tagger_params(),
            "weights": sampling.weights, "seeds": sampling.seeds, "steps": sampling.steps,
            "guidance": sampling.guidance, "size": sampling.size,
            "batch_size": sampling.batch_size,
            "max_bytes": 8 * 2**20, "max_leak": sampling.max_leak, "extra_models": sampling.extra_models,
        }
        return await core.enqueue(actor, "samples", row, params, follows=follows)

    async def latest_samples(self, actor: Actor, project: str, epoch: int | None = None) -> SampleResults:
        """The last samples run: recommendation, scores and pictures (only `epoch`'s grid and rows if given)."""
        row = await self._core.own_project(actor, project)
        folder = self._samples_folder(row)
        report = read_report(folder)
        if report is None:
            raise NotFound(f"{row.name} has no samples yet: train it, then run /lora samples")
        return sample_results(row.name, folder, report, epoch=epoch,
                              epoch_hashes=_hashes(await self._lora_files(row)))

    def _samples_folder(self, row: ProjectRow) -> Path:
        return self._core.folders(row).samples

    async def remember(self, actor: Actor, project: str, overrides: dict[str, str], *,
                       family: str | None = None) -> str:
        """Keeps a shown plan for its Start button; returns the token the button carries."""
        row = await self._core.own_project(actor, project)
        token = secrets.token_hex(6)
        await plan_rows.insert(self._core.db, token, user_id=actor.user_id, project_id=row.id,
                               overrides=overrides, family=family)
        return token

    async def start_remembered(self, actor: Actor, token: str) -> Job:
        db = self._core.db
        plan = await plan_rows.get(db, token)
        if plan is None or plan.user_id != actor.user_id or not await plan_rows.delete(db, token):
            raise NotFound("this training plan is not yours or no longer exists: run /lora train again")
        try:
            row = await self._core.own_project(actor, plan.project_id)
            return await self.start(actor, row.name, plan.overrides, family=plan.family)
        except BaseException:
            await plan_rows.put_back(db, plan)   # refused: the button still works once the reason is fixed
            raise
