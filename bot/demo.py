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
from engine.facade import Engine
from engine.records import Actor

DEMO_USER = Actor(0, "demo", is_admin=True)


async def run_demo(config: Config, *, as_json: bool = False) -> int:
    from engine.devtools.tiny_models import write_tiny_models

    root = config.data_dir / "demo"
    shutil.rmtree(root, ignore_errors=True)  # every demo starts from nothing
    demo_config = dataclasses.replace(config, data_dir=root, web=dataclasses.replace(config.web, enabled=False))
    steps: list[dict[str, Any]] = []

    def step(title: str, started: float, **facts: Any) -> None:
        steps.append({"step": title, "seconds": round(time.monotonic() - started, 2), **facts})
        if not as_json:
            details = ", ".join(f"{key}: {value}" for key, value in facts.items())
            print(f"✓ {title} ({steps[-1]['seconds']} s) — {details}", flush=True)

    started = time.monotonic()
    models = write_tiny_models(root / "models")
    step("tiny models written", started, sd15=str(models.sd15), sdxl=str(models.sdxl), tagger=str(models.tagger))

    engine = await Engine.open(demo_config)
    try:
        started = time.monotonic()
        project = await engine.create_project(DEMO_USER, "DemoChar", "XingBar", "man")
        step("project created", started, name=project.name, trigger=project.trigger, folder=project.path)

        started = time.monotonic()
        job = await engine.run_here(DEMO_USER, "check")
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
