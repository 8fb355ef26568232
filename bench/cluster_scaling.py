"""The GPU lane on a Ray cluster: a queue of short trainings (tiny SD1.5, 4 steps, one project per member) run
here (no cluster, a worker process per job), on one GPU node, and on two, side by side in one run.

A local Ray cluster on this machine (engine.devtools.local_cluster: every process on 127.0.0.1, one CPU each,
custom resources in place of GPUs) stands in for GPU machines; the head (this process) dispatches. Printed:
jobs per minute of each side and the two-node / one-node ratio, and per job (started → done, medians) the
time the cluster adds to a job against running it here: placing the job, packing and unpacking its inputs,
the events and files coming back. On 2 cores two nodes cannot run two trainings at full speed each, so the
ratio says how much the head and Ray leave of the second core, not what two GPU machines give.

    .venv/bin/python -m bench.cluster_scaling [--jobs 4 --rounds 1]

About 3 minutes on 2 cores. Ends with one JSON line of the headline figures.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import interleaved, tiny_models_scratch
from engine.config import ClusterConfig, Config, IntakeConfig, QueueConfig, WebConfig
from engine.devtools.local_cluster import LocalCluster  # sets how Ray resolves addresses: before Ray loads
from engine.devtools.pictures import picture
from engine.intake import IncomingFile
from engine.records import Actor

SIDES = ("here", "1 node", "2 nodes")
TRAINING = {"resolution": "64", "bucket_min": "64", "bucket_max": "64", "batch_size": "1", "network_dim": "4",
            "network_alpha": "2", "epochs": "2", "repeats": "1"}   # 2 pictures × 2 epochs = 4 steps


def _config(data_dir: Path, models: Any, address: str) -> Config:
    return Config(
        data_dir=data_dir, web=WebConfig(enabled=False), intake=IntakeConfig(min_side=32),
        queue=QueueConfig(warm_worker=False, max_queued_per_user=20),
        models=dataclasses.replace(Config().models, default_family="sd15", sd15=str(models.sd15)),
        cluster=ClusterConfig(backend="ray" if address else "", address=address, gpus_per_job=0))


async def _queue(config: Config, jobs: int) -> dict[str, Any]:
    """Queues one training per member at once; the queue's wall time and each job's started → done."""
    from engine.facade import Engine

    engine = await Engine.open(config)
    try:
        members = [Actor(100 + n, f"member{n}") for n in range(jobs)]
        for member in members:
            await engine.create_project(member, "Bench", "benchchar", "man")
            await engine.add_images(member, "Bench", [IncomingFile(f"p{n}.png", picture(n)) for n in range(2)])
        events = engine.subscribe()
        queued = [await engine.training.start(member, "Bench", dict(TRAINING)) for member in members]
        began = time.monotonic()
        await engine.start()
        started: dict[int, float] = {}
        durations: dict[int, float] = {}
        while len(durations) < len(queued):
            event = await events.get()
            if event.type == "started":
                started[event.job_id] = time.monotonic()
            elif event.final:
                if event.type != "done":
                    raise RuntimeError(f"job {event.job_id} ended {event.type}: {event.data}")
                durations[event.job_id] = time.monotonic() - started[event.job_id]
        return {"total": time.monotonic() - began, "jobs": list(durations.values())}
    finally:
        await engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=4, help="trainings in the queue (one member each)")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    with tiny_models_scratch() as (scratch, models):
        cluster = LocalCluster.start({"gpu-a": 24})
        try:
            for round_no in range(args.rounds):
                for side in interleaved(list(SIDES), round_no):
                    if side == "2 nodes" and "gpu-b" not in cluster.nodes:
                        cluster.add("gpu-b", 24)
                    if side == "1 node" and "gpu-b" in cluster.nodes:
                        cluster.kill("gpu-b")
                        time.sleep(2)   # until the head's view of the cluster has lost it
                    address = "" if side == "here" else cluster.address
                    run = asyncio.run(_queue(_config(scratch / f"{side}-{round_no}", models, address), args.jobs))
                    runs[side].append(run)
                    print(f"round {round_no + 1} {side:>8}: {run['total']:.1f} s for {args.jobs} jobs, each "
                          + ", ".join(f"{d:.1f}" for d in run["jobs"]) + " s", flush=True)
        finally:
            cluster.shutdown()

    totals = {side: statistics.median(run["total"] for run in runs[side]) for side in SIDES}
    per_job = {side: statistics.median(d for run in runs[side] for d in run["jobs"]) for side in SIDES}
    per_minute = {side: args.jobs / totals[side] * 60 for side in SIDES}
    scaling = per_minute["2 nodes"] / per_minute["1 node"]
    added = per_job["1 node"] - per_job["here"]
    print(f"\njobs per minute: here {per_minute['here']:.1f}, 1 node {per_minute['1 node']:.1f}, "
          f"2 nodes {per_minute['2 nodes']:.1f} → 2 nodes / 1 node {scaling:.2f}×")
    print(f"a job, started → done (median): here {per_job['here']:.2f} s, on 1 node {per_job['1 node']:.2f} s → "
          f"the cluster adds {added:.2f} s per job (dispatch, inputs out, events and files back)")
    print(json.dumps({"bench": "cluster_scaling", "two_over_one_node": round(scaling, 3),
                      "jobs_per_min": {side: round(v, 2) for side, v in per_minute.items()},
                      "added_latency_s": round(added, 3), "job_s": {side: round(v, 3) for side, v in per_job.items()}}))


if __name__ == "__main__":
    main()
