"""The GPU lane on a Ray cluster: the head (this machine: Discord, database, scheduler, web server) runs each
GPU-lane job on a GPU node of the cluster, as a Ray actor (engine.cluster.node_job) placed by Ray where the
resources the job asks for are free.

A node declares what it has when it joins (`ray start --address HEAD --num-gpus 1 --resources
'{"lorabake_gpu": 1, "lorabake_vram_gb": 24}'`); a job asks for one `lorabake_gpu`, `gpus_per_job` real GPUs
(Ray then sets the actor's CUDA_VISIBLE_DEVICES) and the GPU memory its base-model family needs, so an SDXL
training goes only to a node with enough. The scheduler on the head stays the one place that decides which
job runs next (fair share, quotas, the job rows, cancel, recovery); this module only carries a job there and
its events and files back (engine.cluster.transfer). Nothing but a job's spec and its project's files go to a
node: not the Discord token, not the web secret, not the database.

Imported only when `[cluster] backend = "ray"`.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

from engine.cluster.node_job import NodeJob
from engine.cluster.transfer import Changes, Rejected, apply_changes, pack_inputs, project_path
from engine.config import Config
from engine.jobs.context import JobSpec
from engine.runner import STDERR_TAIL_LINES, Outcome, UnplaceableJob

log = logging.getLogger(__name__)

GPU_RESOURCE = "lorabake_gpu"
VRAM_RESOURCE = "lorabake_vram_gb"
MODEL_RESOURCE = "lorabake_model_{family}"   # the node has [models] <family> in its cache
MODEL_SHARE = 0.01                           # what a job takes of it: any number of jobs may share a model
NAMESPACE = "lorabake"
POLL_WAIT_S = 0.5
CONNECT_TIMEOUT_S = 5.0
# A node the head cannot reach for this long is taken for lost (a node that died is known sooner).
UNREACHABLE_GRACE_S = 20.0


class RayCluster:
    """The head's connection to the cluster."""

    def __init__(self, config: Config) -> None:
        self.config = config.cluster
        self._models = {"sd15": config.models.sd15, "sdxl": config.models.sdxl}

    @classmethod
    def connect(cls, config: Config) -> RayCluster:
        """Joins the cluster as its driver. An address nobody answers at is a ConnectionError at once (Ray
        itself would retry for minutes)."""
        if config.cluster.address:
            host, _, port = config.cluster.address.rpartition(":")
            try:
                socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
            except (OSError, ValueError) as error:
                raise ConnectionError(f"nothing answers at {config.cluster.address} ({error})") from None
        if not ray.is_initialized():
            # The head only drives the cluster: no work of its own, node logs stay on the nodes.
            ray.init(address=config.cluster.address or None, namespace=NAMESPACE, log_to_driver=False,
                     logging_level=logging.WARNING, configure_logging=False)
        return cls(config)

    def close(self) -> None:
        ray.shutdown()

    def nodes(self) -> list[dict[str, float]]:
        """The resources of each live GPU node."""
        return [dict(node["Resources"]) for node in ray.nodes()
                if node.get("Alive") and node["Resources"].get(GPU_RESOURCE, 0) >= 1]

    def slots(self) -> int:
        """How many GPU-lane jobs may run at once: one per `lorabake_gpu` of the live nodes."""
        return sum(int(resources[GPU_RESOURCE]) for resources in self.nodes())

    def needs(self, spec: JobSpec) -> dict[str, float]:
        """One GPU; for a job on a base model of [models], the GPU memory its family needs and, with
        `nodes_declare_models`, a node that has that model in its cache."""
        base = spec.params.get("base_model")
        family = next((name for name, model in self._models.items() if model == base), None)
        needs = {GPU_RESOURCE: 1.0}
        if family is None:   # no base model (tagging, a system check): any GPU node
            return needs
        vram = self.config.sdxl_vram_gb if family == "sdxl" else self.config.sd15_vram_gb
        if vram:
            needs[VRAM_RESOURCE] = vram
        if self.config.nodes_declare_models:
            needs[MODEL_RESOURCE.format(family=family)] = MODEL_SHARE
        return needs

    def unmet(self, needs: dict[str, float]) -> str | None:
        """Why no live node could ever take a job with these needs (None: some node can)."""
        nodes = self.nodes()
        if not nodes:
            return "no GPU machine is in the cluster now"
        if any(all(resources.get(key, 0) >= amount for key, amount in needs.items()) for resources in nodes):
            return None
        for key in needs:
            if key.startswith(MODEL_RESOURCE.format(family="")) and not any(key in node for node in nodes):
                return (f"no GPU machine has its base model: a node that has it in its cache declares \"{key}\": 1 "
                        "in its `ray start --resources`")
        most = max(resources.get(VRAM_RESOURCE, 0) for resources in nodes)
        return (f"it needs a GPU machine with {needs.get(VRAM_RESOURCE, 0):g} GB of GPU memory and the largest "
                f"in the cluster declares {most:g} GB")

    def job(self, project_dir: Path | None) -> RemoteJob:
        return RemoteJob(self, project_dir)


class RemoteJob:
    """One job on a node, driven like a worker process (engine.runner.WorkerProcess) by the scheduler."""

    serves = False
    pid = None

    def __init__(self, cluster: RayCluster, project_dir: Path | None) -> None:
        self._cluster = cluster
        self._project_dir = project_dir
        self._actor: Any = None
        self._log: Any = None
        self._started: Any = None
        self._tail: list[str] = []
        self.node = ""

    async def submit(self, spec: JobSpec, log_path: Path) -> None:
        """Hands the job to Ray, which places it on a node with what it needs as soon as one is free."""
        needs = self._cluster.needs(spec)
        if reason := self._cluster.unmet(needs):
            raise UnplaceableJob(f"this job cannot run: {reason}")
        inputs = await asyncio.to_thread(pack_inputs, self._project_dir) if self._project_dir else b""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("a", encoding="utf-8")
        actor_class = ray.remote(NodeJob).options(
            num_cpus=0, num_gpus=self._cluster.config.gpus_per_job, resources=needs, max_concurrency=4,
            max_restarts=0)
        self._actor = actor_class.remote()
        self._started = self._actor.start.remote(spec.to_json(), inputs)

    async def run(self, on_event: Any) -> Outcome:
        """Passes the node's events on (with its files in the project before the event naming them) until the
        job ends; a node that dies or drops out of the cluster ends it as "lost"."""
        failed: dict[str, Any] | None = None
        unreachable_since: float | None = None
        try:
            self.node = await self._actor.where.remote()
            self._write_log([f"lorabake: running on the GPU machine {self.node}"])
            await on_event({"type": "progress", "step": 0, "total": 0, "message": f"on {self.node}", "node": self.node})
            await self._started
        except RayActorError as error:
            return self._lost(error)
        while True:
            try:
                update = await self._actor.poll.remote(POLL_WAIT_S)
            except ActorUnavailableError as error:   # maybe a moment's trouble on the network: wait a little
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > UNREACHABLE_GRACE_S:
                    return self._lost(error)
                await asyncio.sleep(POLL_WAIT_S)
                continue
            except RayActorError as error:
                return self._lost(error)
            unreachable_since = None
            self._write_log(update["log"])
            if self._project_dir is not None and (update["files"] or update["removed"]):
                changes = Changes(update["files"], update["removed"])
                for problem in await asyncio.to_thread(apply_changes, self._project_dir, changes):
                    self._write_log([f"lorabake: a file from {self.node} was refused: {problem}"])
            for event in update["events"]:
                event = self._on_head(event)
                if event.get("type") == "done":
                    return Outcome("done", result=event.get("result") or {}, log_tail=self._tail)
                if event.get("type") == "failed":
                    failed = event
                    continue
                await on_event(event)
            if update["exit"] is not None:
                if failed is not None:
                    return Outcome("failed", error=failed.get("error") or "the job failed", log_tail=self._tail)
                return Outcome("failed", error=f"the worker on {self.node} exited with code {update['exit']} "
                                               "without a result", log_tail=self._tail)

    def _lost(self, error: Exception) -> Outcome:
        log.warning("job on %s lost: %s", self.node or "a node", error)
        where = f"the GPU machine {self.node}" if self.node else "the GPU machine it was sent to"
        return Outcome("lost", error=f"{where} stopped answering", log_tail=self._tail)

    def _on_head(self, event: dict[str, Any]) -> dict[str, Any]:
        """A node's event as the head records it: paths in the head's project folder (a path the node sent
        that is not plainly inside the project becomes one the recorder refuses), progress naming the node."""
        for key in ("path", "old", "new"):
            if isinstance(event.get(key), str):
                try:
                    event[key] = str(project_path(self._project_dir, event[key])) if self._project_dir else ""
                except Rejected:
                    event[key] = ""
        if event.get("type") == "progress":
            event["node"] = self.node
        return event

    def _write_log(self, lines: list[str]) -> None:
        self._tail = (self._tail + lines)[-STDERR_TAIL_LINES:]
        if self._log is not None and lines:
            self._log.write("".join(line + "\n" for line in lines))
            self._log.flush()

    async def kill(self, grace_s: float) -> None:
        """Stops the job on its node (SIGTERM, SIGKILL after `grace_s`), then the actor."""
        if self._actor is None:
            return
        with contextlib.suppress(RayActorError, GetTimeoutError, TimeoutError):
            await asyncio.wait_for(self._actor.cancel.remote(grace_s), grace_s + 5)
        await self.retire(grace_s)

    async def ready(self, timeout_s: float) -> bool:
        return False

    async def retire(self, grace_s: float) -> None:
        """Removes the job's folder on the node and ends the actor."""
        if self._actor is not None:
            with contextlib.suppress(RayActorError, GetTimeoutError, TimeoutError):
                await asyncio.wait_for(self._actor.close.remote(), grace_s + 5)
            ray.kill(self._actor, no_restart=True)
            self._actor = None
        if self._log is not None:
            self._log.close()
            self._log = None

    reap = retire

    def close_stdin(self) -> None:
        """Nothing to close: the node's worker ends with its actor."""

    @property
    def alive(self) -> bool:
        return self._actor is not None
