"""`lorabake demo`: the whole journey without Discord, a GPU or the internet, in the toy world (a base model
and a tagger trained on 64 px drawn figures, shipped with lorabake): project → pictures of the character
XingBar → tagging → pruning its traits → reg pictures → training → sample grids → scores → the file.
It drives the same engine facade as the bot, in its own data folder (<data_dir>/demo), so it never
touches real members' projects and can run beside the bot. The training uses kohya's defaults at the toy
model's 64 px, so the grids show XingBar appearing as the epochs and the weight grow."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.facade import Engine
from engine.records import Actor

DEMO_USER = Actor(0, "demo", is_admin=True)


def _text(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def _score_table(scores: list[dict[str, Any]]) -> str:
    """Fidelity / leak per epoch (rows) and weight (columns), as percentages."""
    weights = sorted({s["weight"] for s in scores})
    by_cell = {(s["epoch"], s["weight"]): s for s in scores}
    lines = ["  fidelity / leak " + "".join(f"{'w ' + format(w, 'g'):>12}" for w in weights)]
    for epoch in sorted({s["epoch"] for s in scores}):
        cells = [by_cell.get((epoch, w)) for w in weights]
        lines.append(f"  epoch {epoch:<9} " + "".join(
            f"{format(c['fidelity'], '.0%') + ' / ' + format(c['leak'], '.0%'):>12}" if c else f"{'':>12}"
            for c in cells))
    return "\n".join(lines)


async def run_demo(config: Config, *, as_json: bool = False) -> int:
    from engine.devtools import toy_world
    from engine.devtools.toy_world import journey

    root = config.data_dir / "demo"
    shutil.rmtree(root, ignore_errors=True)  # every demo starts from nothing
    steps: list[dict[str, Any]] = []

    def step(title: str, seconds: float, facts: dict[str, Any]) -> None:
        steps.append({"step": title, "seconds": round(seconds, 2), **facts})
        if not as_json:
            shown = ", ".join(f"{key}: {_text(value)}" for key, value in facts.items()
                              if key not in ("scores", "recommended"))
            print(f"✓ {title} ({steps[-1]['seconds']} s) — {shown}", flush=True)
            if "scores" in facts:
                print(_score_table(facts["scores"]), flush=True)

    models = toy_world.shipped()
    character = f"{toy_world.CHARACTER.name}: {', '.join(toy_world.CHARACTER.traits())}"
    step("toy world models", 0.0, {"sd15": str(models.sd15), "tagger": str(models.tagger), "character": character})
    engine = await Engine.open(journey.toy_config(config, root))
    try:
        result = await journey.run(engine, DEMO_USER, on_step=step)
    finally:
        await engine.close()
    summary = {"ok": result.ok and all("error" not in s for s in steps), "data_dir": str(root), "steps": steps}
    if result.recommended is not None:
        summary["scores"] = [dataclasses.asdict(s) for s in result.scores]
        summary["recommended"] = dataclasses.asdict(result.recommended)
        summary["files"] = {"lora": str(result.lora), "pictures": [str(p) for p in result.pictures]}
    return _finish(summary, result.project_dir, as_json)


def _finish(summary: dict[str, Any], project_folder: Path | None, as_json: bool) -> int:
    root = summary["data_dir"]
    if as_json:
        print(json.dumps(summary, indent=2))
    elif summary["ok"]:
        print(f"\nEverything the demo made is in {root}; the project folder {project_folder} holds the pictures "
              "(dataset/, reg/), the grids and heat map (samples/) and the LoRA files (output/). Run `lorabake run` "
              "with a Discord token to serve members.")
    else:
        print(f"\nThe demo stopped at a failed step (above). Its files are in {root}.")
    return 0 if summary["ok"] else 1
