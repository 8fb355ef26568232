"""Does lorabake make a good LoRA, and do its scores mean it? Measured in the toy world (the shipped base
model and tagger, engine/devtools/toy_world), through the member's real journey (the engine facade, real
jobs), in variants side by side:

- recipe:        traits pruned, reg pictures, the demo's training (engine/devtools/toy_world/journey.py);
- traits kept:   the same with the traits left in the captions (the seed's lesson: the trigger learns less);
- no reg:        the recipe without reg pictures;
- reg class:     reg pictures trained on the class alone (reg_captions = class) instead of their tags;
- overtrained:   the recipe at 5× the repeats, so 5× the steps (the LoRA "bends everything"); its learning
                 rates are already the most the options allow;
- kohya-set:     the recipe with kohya's default module set (the recipe trains the attention projections
                 only), at equal steps;
- locon:         kohya's set as LoCon (`network=locon`: kohya-colab's conv_dim 8 / conv_alpha 1 besides dim 16 /
                 alpha 8), at equal steps.

For each: the samples job's fidelity / leak table per epoch and weight, its recommended cell, and the
trigger-only fidelity (prompt = the trigger word alone, `--seeds` seeds, read by the toy tagger: the share
of XingBar's four traits drawn) at the recommended cell and at the last epoch at weight 1.

    .venv/bin/python -m bench.toy_quality [--variants recipe,traits-kept] [--seeds 16] [--keep DIR]

About 4–5 minutes per variant on 2 cores (overtrained: 12). Ends with one JSON line of the headline figures.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import machine, quiet_libraries
from engine.config import Config
from engine.devtools.toy_world import CHARACTER, GUIDANCE, journey, shipped
from engine.records import Actor

ACTOR = Actor(0, "bench", is_admin=True)
VARIANTS = {
    "recipe": journey.Variant("recipe"),
    "traits-kept": journey.Variant("traits-kept", prune=False),
    "no-reg": journey.Variant("no-reg", reg_pictures=0),
    "reg-class": journey.Variant("reg-class", training={**journey.TRAINING, "reg_captions": "class"}),
    "overtrained": journey.Variant("overtrained", training={
        **journey.TRAINING, "repeats": str(5 * int(journey.TRAINING["repeats"]))}),
    "kohya-set": journey.Variant("kohya-set", training={**journey.TRAINING, "network_modules": "kohya"}),
    "locon": journey.Variant("locon", training={**journey.TRAINING, "network_modules": "kohya", "network": "locon"}),
}


def trigger_only_fidelity(lora: Path, weight: float, seeds: int, clip_skip: int) -> float:
    """Share of the character's traits the toy tagger reads in samples of the trigger word alone."""
    from engine.devtools.toy_world.tagger import ToyReader
    from engine.models import resolve_base_model
    from engine.samples.render import SampleRenderer, SampleSpec

    models = shipped()
    renderer = SampleRenderer(resolve_base_model(str(models.sd15)), device="cpu")
    spec = SampleSpec(prompts=[CHARACTER.name], weights=[weight], seeds=list(range(100, 100 + seeds)), steps=10,
                      guidance=GUIDANCE, size=(64, 64), clip_skip=clip_skip,
                      batch_size=16)
    reader = ToyReader(models.tagger)
    traits = set(CHARACTER.traits())
    shares = [len(traits & reader.tags(s.image)) / len(traits) for s in renderer.render({"lora": lora}, spec)]
    return statistics.fmean(shares)


async def one_variant(variant: journey.Variant, folder: Path, seeds: int) -> dict[str, Any]:
    from engine.facade import Engine
    from engine.training.lora_files import epoch_files, lora_clip_skip

    engine = await Engine.open(journey.toy_config(Config(), folder, reg_pictures=variant.reg_pictures))
    started = time.monotonic()
    try:
        result = await journey.run(engine, ACTOR, variant)
    finally:
        await engine.close()
    took = time.monotonic() - started
    if not result.ok or result.recommended is None or result.project_dir is None:
        return {"variant": variant.name, "ok": False}
    best = result.recommended
    files = dict(epoch_files(result.project_dir / "output", CHARACTER.name))
    last = max(files)
    clip_skip = lora_clip_skip(files[last])
    return {
        "variant": variant.name, "ok": True, "seconds": round(took, 1),
        "scores": [{"epoch": s.epoch, "weight": s.weight, "fidelity": s.fidelity, "leak": s.leak}
                   for s in result.scores],
        "recommended": {"epoch": best.epoch, "weight": best.weight, "fidelity": best.fidelity, "leak": best.leak},
        "trigger_only_recommended": trigger_only_fidelity(files[best.epoch], best.weight, seeds, clip_skip),
        "trigger_only_last_w1": trigger_only_fidelity(files[last], 1.0, seeds, clip_skip),
        "advice": result.advice,
    }


def print_table(row: dict[str, Any], max_leak: float) -> None:
    print(f"\n== {row['variant']} ({row['seconds']} s) — fidelity / leak per epoch and weight "
          f"(* leak over max_leak {max_leak:.0%}, [ ] recommended)")
    weights = sorted({s["weight"] for s in row["scores"]})
    print("epoch " + "".join(f"{'w ' + format(w, 'g'):>15}" for w in weights))
    best = row["recommended"]
    for epoch in sorted({s["epoch"] for s in row["scores"]}):
        cells = []
        for w in weights:
            s = next(c for c in row["scores"] if c["epoch"] == epoch and c["weight"] == w)
            text = f"{s['fidelity']:.0%}/{s['leak']:.0%}{'*' if s['leak'] > max_leak else ''}"
            cells.append(f"[{text}]" if (epoch, w) == (best["epoch"], best["weight"]) else text)
        print(f"{epoch:<5} " + "".join(f"{c:>15}" for c in cells))
    print(f"recommended: epoch {best['epoch']} at weight {best['weight']:g}: fidelity {best['fidelity']:.0%}, "
          f"leak {best['leak']:.0%}; trigger-only fidelity there {row['trigger_only_recommended']:.0%}, "
          f"at the last epoch, weight 1: {row['trigger_only_last_w1']:.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", type=int, default=16, help="seeds per trigger-only fidelity")
    parser.add_argument("--keep", type=Path, default=None, help="keep each variant's data folder under DIR")
    args = parser.parse_args()
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    import diffusers
    import torch

    quiet_libraries()
    torch.set_num_threads(1)
    print(machine(torch, diffusers))
    max_leak = Config().samples.max_leak
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="toy-quality-"))
    try:
        for name in names:
            folder = (args.keep or scratch) / name
            shutil.rmtree(folder, ignore_errors=True)
            row = asyncio.run(one_variant(VARIANTS[name], folder, args.seeds))
            rows.append(row)
            if row["ok"]:
                print_table(row, max_leak)
            else:
                print(f"\n== {name}: the journey failed; see {folder}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    by_name = {r["variant"]: r for r in rows if r["ok"]}
    print("\nside by side: variant, recommended cell fidelity/leak, trigger-only fidelity (recommended, last w1)")
    for row in by_name.values():
        best = row["recommended"]
        print(f"  {row['variant']:<12} e{best['epoch']} w{best['weight']:g}: {best['fidelity']:.0%} / "
              f"{best['leak']:.0%}   trigger-only {row['trigger_only_recommended']:.0%}, "
              f"{row['trigger_only_last_w1']:.0%}")
    headline = {
        name: {"recommended": row["recommended"], "trigger_only_recommended": round(row["trigger_only_recommended"], 3),
               "trigger_only_last_w1": round(row["trigger_only_last_w1"], 3),
               "fidelity_w0": round(statistics.fmean(s["fidelity"] for s in row["scores"] if s["weight"] == 0), 3),
               "max_leak_w1": round(max(s["leak"] for s in row["scores"] if s["weight"] == 1.0), 3)}
        for name, row in by_name.items()}
    print(json.dumps({"bench": "toy_quality", "max_leak": max_leak, **headline}))


if __name__ == "__main__":
    main()
