"""`lorabake demo`: the journey without Discord, a GPU or the internet, on tiny generated models.
It drives the same engine facade as the bot, in its own data folder (<data_dir>/demo), so it never
touches real members' projects and can run beside the bot."""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from typing import Any

from engine.config import Config
from engine.devtools.pictures import picture
from engine.facade import Engine
from engine.intake import IncomingFile
from engine.records import Actor

DEMO_USER = Actor(0, "demo", is_admin=True)


async def run_demo(config: Config, *, as_json: bool = False) -> int:
    from engine.devtools.tiny_models import write_tiny_models

    root = config.data_dir / "demo"
    shutil.rmtree(root, ignore_errors=True)  # every demo starts from nothing
    steps: list[dict[str, Any]] = []

    def step(title: str, started: float, **facts: Any) -> None:
        steps.append({"step": title, "seconds": round(time.monotonic() - started, 2), **facts})
        if not as_json:
            details = ", ".join(f"{key}: {value}" for key, value in facts.items())
            print(f"✓ {title} ({steps[-1]['seconds']} s) — {details}", flush=True)

    started = time.monotonic()
    models = write_tiny_models(root / "models")
    step("tiny models written", started, sd15=str(models.sd15), sdxl=str(models.sdxl), tagger=str(models.tagger))

    demo_config = dataclasses.replace(
        config, data_dir=root, web=dataclasses.replace(config.web, enabled=False),
        tagger=dataclasses.replace(config.tagger, model=str(models.tagger), general_threshold=0.3))
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

        started = time.monotonic()
        job = await engine.run_here(lambda: engine.enqueue(DEMO_USER, "check"))
        step(f"system check job #{job.id} {job.state} in a worker process", started, **(job.result or {}),
             **({"error": job.error} if job.error else {}))
    finally:
        await engine.close()

    summary = {"ok": all("error" not in s for s in steps), "data_dir": str(root), "steps": steps}
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"\nEverything the demo made is in {root}. Run `lorabake run` with a Discord token to serve members.")
    return 0 if summary["ok"] else 1
