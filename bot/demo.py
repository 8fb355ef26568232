"""`lorabake demo`: the whole journey without Discord, a GPU or the internet, on tiny generated models:
project → pictures → tagging → curation → reg pictures → training → sample grids → scores → the file.
It drives the same engine facade as the bot, in its own data folder (<data_dir>/demo), so it never
touches real members' projects and can run beside the bot. Sizes and step counts are cut down so it
finishes in a few minutes on a CPU; the models are random, so the pictures are noise."""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.devtools.pictures import picture
from engine.facade import Engine
from engine.intake import IncomingFile
from engine.records import Actor, Job

DEMO_USER = Actor(0, "demo", is_admin=True)
# A training that ends in seconds on a CPU: 64 px, one step per epoch, a small network.
TINY_TRAINING = {"resolution": "64", "bucket_min": "64", "bucket_max": "64", "batch_size": "4", "epochs": "2",
                 "repeats": "1", "network_dim": "4", "network_alpha": "2", "save_every_n_epochs": "1"}


def _took(job: Job) -> float | None:
    return job.finished_at - job.started_at if job.finished_at and job.started_at else None


def _result(job: Job, *keys: str) -> dict[str, Any]:
    """The facts of a job's result worth a line, or the reason it failed."""
    if job.error:
        return {"error": job.error}
    return {key: (job.result or {})[key] for key in keys if key in (job.result or {})}


async def run_demo(config: Config, *, as_json: bool = False) -> int:
    from engine.devtools.tiny_models import write_tiny_models

    root = config.data_dir / "demo"
    shutil.rmtree(root, ignore_errors=True)  # every demo starts from nothing
    steps: list[dict[str, Any]] = []

    def step(title: str, started: float, seconds: float | None = None, **facts: Any) -> None:
        took = time.monotonic() - started if seconds is None else seconds
        steps.append({"step": title, "seconds": round(took, 2), **facts})
        if not as_json:
            details = ", ".join(f"{key}: {value}" for key, value in facts.items())
            print(f"✓ {title} ({steps[-1]['seconds']} s) — {details}", flush=True)

    started = time.monotonic()
    models = write_tiny_models(root / "models")
    step("tiny models written", started, sd15=str(models.sd15), sdxl=str(models.sdxl), tagger=str(models.tagger))

    demo_config = dataclasses.replace(
        config, data_dir=root, web=dataclasses.replace(config.web, enabled=False),
        tagger=dataclasses.replace(config.tagger, model=str(models.tagger), general_threshold=0.3),
        models=dataclasses.replace(config.models, default_family="sd15", sd15=str(models.sd15),
                                   sdxl=str(models.sdxl), sd15_prediction="", sdxl_prediction=""),
        reg=dataclasses.replace(config.reg, count=4, batch_size=2, steps=2, resolution=64),
        samples=dataclasses.replace(config.samples, weights=[0.0, 0.5, 1.0], steps=2, size=64,
                                    auto_after_training=True, extra_models=[]))
    engine = await Engine.open(demo_config)
    try:
        started = time.monotonic()
        project = await engine.create_project(DEMO_USER, "DemoChar", "XingBar", "man")
        step("project created", started, name=project.name, trigger=project.trigger, folder=project.path)

        started = time.monotonic()
        uploads = [IncomingFile(f"photo_{n:02d}.png", picture(n, size=(384, 448))) for n in range(8)]
        uploads.append(IncomingFile("notes.png", b"a text file with a picture's name"))
        report = await engine.add_images(DEMO_USER, project.name, uploads)
        step("pictures added", started, accepted=len(report.accepted),
             refused="; ".join(f"{item.name}: {item.reason}" for item in report.rejected))

        started = time.monotonic()
        tagged = await engine.run_here(lambda: engine.tag(DEMO_USER, project.name))
        top = ", ".join(f"{s.tag} ×{s.count}" for s in (await engine.tag_stats(DEMO_USER, project.name))[:8])
        step(f"tagging job #{tagged.id} {tagged.state}", started, provider=(tagged.result or {}).get("provider"),
             top_tags=top, **({"error": tagged.error} if tagged.error else {}))
        if tagged.state != "done":
            return _finish(steps, root, as_json)

        started = time.monotonic()
        view = await engine.curation.view(DEMO_USER, project.name)
        traits = list(view.suggested)[:3] or [view.stats[0].tag]
        await engine.curation.remove_tags(DEMO_USER, project.name, traits)
        step("curated: the character's fixed traits pruned", started, removed=", ".join(traits),
             why="a trait left out of the captions is learned by the trigger word")

        started = time.monotonic()
        reg = await engine.run_here(lambda: engine.reg.start(DEMO_USER, project.name))
        step(f"reg pictures job #{reg.id} {reg.state}", started, **_result(reg, "rendered", "prompt"))
        if reg.state != "done":
            return _finish(steps, root, as_json)

        started = time.monotonic()
        training = await engine.run_chain_here(lambda: engine.training.start(DEMO_USER, project.name, TINY_TRAINING))
        train, *after = training
        step(f"training job #{train.id} {train.state}", started, _took(train),
             **_result(train, "file", "steps", "final_loss"))
        for job in after:
            step(f"{job.title.lower()} job #{job.id} {job.state} (queued by the training)", started, _took(job),
                 **_result(job, "recommended_epoch", "recommended_weight", "grids"))

        if train.state == "done":
            started = time.monotonic()
            results = await engine.training.latest_samples(DEMO_USER, project.name)
            step("scores and recommendation", started, advice=results.explanation,
                 pictures=", ".join(str(path) for path in results.files[:3]) + (" …" if len(results.files) > 3 else ""))
            lora = await engine.training.lora_file(DEMO_USER, project.name)
            step("the LoRA to download", time.monotonic(), file=str(lora.path), which=lora.description,
                 size=f"{lora.artifact.size / 1024:.0f} KB")
    finally:
        await engine.close()
    return _finish(steps, root, as_json, project.path)


def _finish(steps: list[dict[str, Any]], root: Path, as_json: bool, project_folder: str | None = None) -> int:
    summary = {"ok": all("error" not in s for s in steps), "data_dir": str(root), "steps": steps}
    if as_json:
        print(json.dumps(summary, indent=2))
    elif summary["ok"]:
        print(f"\nEverything the demo made is in {root}; the project folder {project_folder} holds the pictures "
              "(dataset/, reg/), the grids and heat map (samples/) and the LoRA files (output/). Run `lorabake run` "
              "with a Discord token to serve members.")
    else:
        print(f"\nThe demo stopped at a failed step (above). Its files are in {root}.")
    return 0 if summary["ok"] else 1
