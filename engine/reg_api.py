"""Regularization pictures as the bot and the CLI ask for them: the request checked and turned into a
queued "reg" job (engine.jobs.reg), with a reason for every refusal."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from engine.core import Core, choose_family
from engine.errors import Invalid, LimitReached
from engine.models import resolve_base_model
from engine.naming import is_hidden
from engine.records import Actor, Job
from engine.reg.spec import RegSpec, class_prompt
from engine.training.options import preset
from storage import images as image_rows
from storage.projects import ProjectRow

# CLIP reads 77 tokens; a prompt far longer than that is cut off unseen, so it is refused instead.
MAX_PROMPT_CHARS = 300


@dataclass(frozen=True)
class RegRequest:
    project: ProjectRow
    spec: RegSpec
    new_pictures: int       # of spec.count, those not in the project yet


class RegAPI:
    def __init__(self, core: Core) -> None:
        self._core = core

    async def plan(self, actor: Actor, project: str, *, count: int | None = None,
                   prompt: str | None = None, family: str | None = None) -> RegRequest:
        """What a request would render. `prompt` replaces the project's class (the quality words of
        [reg] quality_prompt still go first); None or blank = the class. `family`: the base model the
        LoRA will be trained on (None: the server's default), so the pictures match it."""
        core = self._core
        settings = core.config.reg
        row = await core.own_project(actor, project)
        count = _check_count(settings.count if count is None else count, settings.max_count)
        subject = row.class_name if prompt is None or not prompt.strip() else _check_prompt(prompt)
        models = core.config.models
        family = choose_family(family, models.default_family)
        base_model, prediction = models.spec_for(family), models.prediction_for(family)
        # Resolving finds a missing or wrong base model now, with a message, not in the worker later.
        info = await asyncio.to_thread(resolve_base_model, base_model, prediction=prediction)
        size = settings.resolution or preset(info.family, info.resolution).resolution
        spec = RegSpec(base_model=base_model, prediction=prediction,
                       prompt=class_prompt(settings.quality_prompt, subject), negative_prompt=settings.negative_prompt,
                       count=count, steps=settings.steps, guidance=settings.guidance, width=size, height=size,
                       seed=settings.seed, batch_size=settings.batch_size)
        existing = await image_rows.list_for_project(core.db, row.id, "reg")
        names = {picture.filename for picture in existing}
        new = sum(name not in names for name in spec.filenames())
        await self._check_room(actor, row.name, len(existing), new)
        return RegRequest(row, spec, new)

    async def start(self, actor: Actor, project: str, *, count: int | None = None,
                    prompt: str | None = None, family: str | None = None) -> Job:
        request = await self.plan(actor, project, count=count, prompt=prompt, family=family)
        params = {**request.spec.to_params(), "tagger": self._core.tagger_params()}
        return await self._core.enqueue(actor, "reg", request.project, params)

    async def _check_room(self, actor: Actor, project: str, existing: int, new: int) -> None:
        limits = self._core.config.intake
        if existing + new > limits.max_images_per_project:
            raise LimitReached(
                f"{project} has {existing} reg pictures and this would add {new}, more than the "
                f"{limits.max_images_per_project} this server allows per set: ask for at most "
                f"{max(limits.max_images_per_project - existing, 0)} more, or remove some first")
        mine = await image_rows.count_for_user(self._core.db, actor.user_id)
        if mine + new > limits.max_images_per_user:
            raise LimitReached(
                f"you have {mine} pictures across your projects and this would add {new}, more than the "
                f"{limits.max_images_per_user} this server allows: ask for fewer, or delete pictures or "
                "projects you no longer need")


def _check_count(count: int, most: int) -> int:
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= most:
        raise Invalid(f"the number of reg pictures must be a whole number from 1 to {most} (this server's "
                      f"[reg] max_count), got {count!r}: about 100 is usual")
    return count


def _check_prompt(prompt: str) -> str:
    text = prompt.strip()
    if any(is_hidden(ch) for ch in text):
        raise Invalid("the reg prompt must be one line of plain text: remove line breaks and control characters")
    if len(text) > MAX_PROMPT_CHARS:
        raise Invalid(f"the reg prompt is {len(text)} characters long; the most is {MAX_PROMPT_CHARS} (the model "
                      "reads only about 75 words): shorten it")
    return text
