"""What a job costs besides its work: a queue of short jobs (tagging, reg pictures of 2, a 4-step training,
sample grids) on the tiny models, through the real engine and worker processes, with the warm GPU worker
(`[queue] warm_worker = true`) against a process per job (`false`), side by side in one run.

Per job, from the engine's events as they arrive: start to first step (imports, base model load, set-up:
`started` → first `progress`), last step to finished (saving, the result: last `progress` → `done`), and
the whole job. The total is the queue's wall time, first job queued to last one done. Tagging runs on the
CPU lane (onnxruntime on the CPU) and gets a fresh process either way; reg pictures, training and samples
share the GPU lane, so the warm worker loads the base model once for them. Sides alternate per round
(A B, then B A) so a drifting machine hits both alike.

    .venv/bin/python -m bench.job_overhead [--rounds 2]

About 1 minute per side and round on 2 cores. Ends with one JSON line of the headline figures.
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
from engine.config import Config, IntakeConfig, QueueConfig, RegConfig, SamplesConfig, TaggerConfig, WebConfig
from engine.devtools.pictures import picture
from engine.records import Actor

ACTOR = Actor(1, "bench")
SIDES = {"warm": True, "process": False}
TRAINING = {"resolution": "64", "bucket_min": "64", "bucket_max": "64", "batch_size": "1", "network_dim": "4",
            "network_alpha": "2", "epochs": "1", "repeats": "1"}   # 2 pictures + 2 reg = 4 steps


def _config(data_dir: Path, models: Any, warm: bool) -> Config:
    return Config(
        data_dir=data_dir, web=WebConfig(enabled=False), intake=IntakeConfig(min_side=32),
        queue=QueueConfig(warm_worker=warm),
        models=dataclasses.replace(Config().models, default_family="sd15", sd15=str(models.sd15)),
        tagger=TaggerConfig(model=str(models.tagger), general_threshold=0.2),
        reg=dataclasses.replace(RegConfig(), count=2, steps=2, resolution=64, batch_size=2),
        samples=SamplesConfig(weights=[0.0, 1.0], steps=2, size=64, auto_after_training=False))


async def _queue(config: Config) -> dict[str, Any]:
    """Runs tag → reg → train → samples; per job the seconds start→first step, last step→done, in all."""
    from engine.facade import Engine
    from engine.intake import IncomingFile

    engine = await Engine.open(config)
    await engine.start()
    try:
        await engine.create_project(ACTOR, "Bench", "benchchar", "man")
        await engine.add_images(ACTOR, "Bench", [IncomingFile(f"p{n}.png", picture(n)) for n in range(2)])
        events = engine.subscribe()
        began = time.monotonic()
        jobs: dict[str, dict[str, float]] = {}
        starts = {
            "tag": lambda: engine.tag(ACTOR, "Bench"),
            "reg": lambda: engine.reg.start(ACTOR, "Bench", count=2),
            "train": lambda: engine.training.start(ACTOR, "Bench", dict(TRAINING)),
            "samples": lambda: engine.training.samples(ACTOR, "Bench"),
        }
        for kind, start in starts.items():   # one after another: each needs the one before
            job = await start()
            seen: dict[str, float] = {}
            while True:
                event = await events.get()
                if event.job_id != job.id:
                    continue
                now = time.monotonic()
                if event.type == "started":
                    seen["started"] = now
                elif event.type == "progress":
                    seen.setdefault("first_step", now)
                    seen["last_step"] = now
                elif event.final:
                    if event.type != "done":
                        raise RuntimeError(f"{kind} job ended {event.type}: {event.data}")
                    seen["done"] = now
                    break
            jobs[kind] = {"start_to_first_step": seen.get("first_step", seen["done"]) - seen["started"],
                          "last_step_to_done": seen["done"] - seen.get("last_step", seen["done"]),
                          "job": seen["done"] - seen["started"]}
        return {"total": time.monotonic() - began, "jobs": jobs}
    finally:
        await engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    with tiny_models_scratch() as (scratch, models):
        for round_no in range(args.rounds):
            for side in interleaved(list(SIDES), round_no):
                data = scratch / f"{side}-{round_no}"
                run = asyncio.run(_queue(_config(data, models, SIDES[side])))
                runs[side].append(run)
                print(f"round {round_no + 1} {side:>7}: {run['total']:.1f} s  " + "  ".join(
                    f"{kind} {j['job']:.1f} s (start {j['start_to_first_step']:.1f}, end {j['last_step_to_done']:.2f})"
                    for kind, j in run["jobs"].items()), flush=True)

    def median(side: str, kind: str, what: str) -> float:
        return round(statistics.median(run["jobs"][kind][what] for run in runs[side]), 3)

    totals = {side: statistics.median(run["total"] for run in runs[side]) for side in SIDES}
    overhead = {side: {kind: {"start": median(side, kind, "start_to_first_step"),
                              "end": median(side, kind, "last_step_to_done")} for kind in runs[side][0]["jobs"]}
                for side in SIDES}
    print(f"\nmedian queue time: warm worker {totals['warm']:.1f} s, process per job {totals['process']:.1f} s "
          f"→ process per job takes {totals['process'] / totals['warm']:.2f}× as long")
    for kind in overhead["warm"]:
        w, p = overhead["warm"][kind], overhead["process"][kind]
        print(f"  {kind:>8}: start to first step {p['start']:.2f} s → {w['start']:.2f} s warm; "
              f"last step to done {p['end']:.2f} s → {w['end']:.2f} s")
    print(json.dumps({"bench": "job_overhead", "process_over_warm": round(totals["process"] / totals["warm"], 3),
                      "total_s": {side: round(t, 2) for side, t in totals.items()}, "overhead_s": overhead}))


if __name__ == "__main__":
    main()
