"""Keeps each job's status message current: turns engine events into edits of the message whose id
was stored in the database (an interaction token dies after 15 minutes; a training takes hours).

Edits are throttled per message (config: discord.status_edit_interval_s) and coalesced: a burst of
progress events becomes one edit showing the latest state. When a job ends, its owner is pinged."""
from __future__ import annotations

import asyncio
import logging
import time

import discord

from bot.job_messages import job_embed, job_view
from bot.samples.views import post_results
from engine.errors import UserError
from engine.facade import Engine
from engine.records import Actor, EngineEvent, Job

log = logging.getLogger(__name__)


class StatusMessages:
    def __init__(self, client: discord.Client, engine: Engine, interval_s: float) -> None:
        self._client = client
        self._engine = engine
        self._interval = interval_s
        self._subscription = engine.subscribe()
        self._last_edit: dict[int, float] = {}
        self._pending: dict[int, asyncio.Task[None]] = {}
        self._consumer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._consumer = asyncio.create_task(self._consume(), name="status-messages")

    async def close(self) -> None:
        self._subscription.close()
        tasks = [task for task in (self._consumer, *self._pending.values()) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def track(self, job: Job, message: discord.Message | discord.InteractionMessage) -> None:
        """Remembers where a job's status lives, so later events (and restarts) can edit it."""
        await self._engine.attach_status_message(job.id, message.channel.id, message.id)
        self._last_edit[job.id] = time.monotonic()
        # Events that arrived before the message existed were dropped: catch up (and ping if it ended).
        self._schedule(job.id, final=True)

    async def refresh_active(self) -> None:
        """After a (re)start: bring every active job's message up to date (positions, recovery notes)."""
        for job in await self._engine.jobs():
            self._schedule(job.id, final=False)

    async def _consume(self) -> None:
        async for event in self._subscription:
            try:
                await self._on_event(event)
            except Exception:  # one bad event must not stop status updates for everyone
                log.exception("status update for %s failed", event)

    async def _on_event(self, event: EngineEvent) -> None:
        if event.type == "positions":
            for job in await self._engine.jobs():
                if job.state == "queued":
                    self._schedule(job.id, final=False)
            return
        if event.type == "log":
            return
        if event.type == "queued" and event.data.get("follows"):
            await self._show_follow_up(event.job_id, int(event.data["follows"]))
            return
        self._schedule(event.job_id, final=event.final)

    async def _show_follow_up(self, job_id: int, follows: int) -> None:
        """A job the engine queued by itself after another (samples after a training) gets its own status
        message in the channel where the first job is shown; untracked first jobs (the CLI's) get none."""
        where = await self._engine.status_message(follows)
        if where is None:
            return
        job = await self._engine.job(job_id)
        try:
            message = await self._client.get_partial_messageable(where.channel_id).send(
                embed=job_embed(job), view=job_view(job.id, job.active))
        except discord.HTTPException as error:
            log.warning("could not post the status message of job %s: %s", job_id, error)
            return
        await self.track(job, message)

    def _schedule(self, job_id: int, *, final: bool) -> None:
        pending = self._pending.get(job_id)
        if pending is not None and not pending.done():
            if not final:
                return  # the pending edit will show the newest state anyway
            pending.cancel()
        delay = max(0.0, self._last_edit.get(job_id, 0.0) + self._interval - time.monotonic())
        self._pending[job_id] = asyncio.create_task(self._edit_later(job_id, delay, final))

    async def _edit_later(self, job_id: int, delay: float, final: bool) -> None:
        if delay:
            await asyncio.sleep(delay)
        self._pending.pop(job_id, None)
        where = await self._engine.status_message(job_id)
        if where is None:
            return
        job = await self._engine.job(job_id)
        embed = job_embed(job)
        rendered = str(embed.to_dict())
        if rendered == where.rendered:
            return
        message = self._client.get_partial_messageable(where.channel_id).get_partial_message(where.message_id)
        self._last_edit[job_id] = time.monotonic()
        try:
            await message.edit(embed=embed, view=job_view(job.id, job.active))
        except discord.NotFound:
            log.info("status message of job %s was deleted; not tracking it any more", job_id)
        except discord.HTTPException as error:
            log.warning("could not edit status message of job %s: %s", job_id, error)
            return
        await self._engine.mark_status_rendered(job_id, rendered)
        if final and job.state in ("done", "failed"):
            await self._ping_owner(job, where.channel_id, message)
            if job.kind == "samples" and job.state == "done":
                await self._post_samples(job, where.channel_id, message)

    async def _post_samples(self, job: Job, channel_id: int, message: discord.PartialMessage) -> None:
        """What /lora samples shows (recommendation, scores, heat map, grids), under the finished job."""
        if job.project_name is None:
            return
        try:
            results = await self._engine.training.latest_samples(Actor(job.user_id), job.project_name)
        except UserError as error:  # the project went away meanwhile
            log.info("no samples to post for job %s: %s", job.id, error)
            return
        channel = self._client.get_partial_messageable(channel_id)
        reply = message.to_reference(fail_if_not_exists=False)
        try:
            await post_results(results, lambda **sent: channel.send(reference=reply, **sent), channel.send)
        except discord.HTTPException as error:
            log.warning("could not post the samples of job %s: %s", job.id, error)

    async def _ping_owner(self, job: Job, channel_id: int, message: discord.PartialMessage) -> None:
        verb = "finished" if job.state == "done" else "failed"
        channel = self._client.get_partial_messageable(channel_id)
        try:
            await channel.send(
                f"<@{job.user_id}> your {job.title.lower()} #{job.id} {verb}.",
                reference=message.to_reference(fail_if_not_exists=False),
                allowed_mentions=discord.AllowedMentions(users=[discord.Object(job.user_id)], replied_user=False),
            )
        except discord.HTTPException as error:
            log.warning("could not ping the owner of job %s: %s", job.id, error)
