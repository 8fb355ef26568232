"""The "samples" job: every kept epoch × each LoRA weight × fixed prompts and seeds, rendered with
the base model loaded once; the tagger reads every sample; fidelity and leak per epoch × weight; a
recommended epoch and weight; labelled grids sized for Discord, written to the project's samples/.

params: base_model, name, trigger, class_name, character_tags, tagger (TagOptions fields), weights,
seeds, steps, size, max_bytes, max_leak."""
from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from engine.jobs.context import JobContext, JobFailed
from engine.models import resolve_base_model
from engine.training import kohya_format
from engine.samples.render import Sample, SampleRenderer, SampleSpec, default_prompts, grids
from engine.samples.scores import CellScore, fidelity, leak, pixel_distance, recommend, tag_distance
from engine.tagging import TaggerError
from engine.tagging.model import Tagger
from engine.tagging.options import TagOptions
from engine.tagging.preprocess import prepare
from engine.tagging.tags import Captioner
from storage.layout import atomic_write_bytes, atomic_write_text


def epoch_files(output: Path, name: str) -> dict[str, Path]:
    """label → file for each kept epoch (`<name>-NN.safetensors`), in epoch order."""
    return {f"epoch {epoch}": path for epoch, path in kohya_format.epoch_files(output, name)}


def run(ctx: JobContext) -> dict[str, Any]:
    try:
        return _run(ctx)
    except TaggerError as error:
        raise JobFailed(f"the samples were rendered but could not be scored: {error}") from None


def _run(ctx: JobContext) -> dict[str, Any]:
    params = ctx.params
    files = epoch_files(ctx.project_dir / "output", params["name"])
    if not files:
        raise JobFailed("there are no trained epochs to sample yet: train the LoRA first with /lora train")
    prompts, controls = default_prompts(params["trigger"], params["class_name"])
    spec = SampleSpec(prompts=prompts, control_prompts=controls, weights=params["weights"], seeds=params["seeds"],
                      steps=params["steps"], size=tuple(params["size"]))
    spec.check()
    ctx.progress(0, 3, "loading the base model")
    renderer = SampleRenderer(resolve_base_model(params["base_model"]))
    ctx.progress(1, 3, f"rendering {len(files)} epochs × {len(spec.weights)} weights")
    samples = renderer.render(files, spec)
    ctx.progress(2, 3, "reading the samples with the tagger")
    tags = _tag_samples(samples, TagOptions.from_params(params["tagger"]))
    scores = _scores(samples, tags, params["character_tags"])
    choice = recommend(scores, max_leak=params["max_leak"])

    folder = ctx.project_dir / "samples"
    written = []
    for index, grid in enumerate(grids(samples, title=params["name"], max_bytes=params["max_bytes"]), start=1):
        path = folder / f"grid-{index:02d}.{'png' if grid.format == 'PNG' else 'jpg'}"
        atomic_write_bytes(path, grid.data)
        ctx.artifact("grid", path)
        written.append(path.name)
    report = {"scores": [s.__dict__ for s in scores], "recommended": {"epoch": choice.epoch, "weight": choice.weight},
              "explanation": choice.explanation, "grids": written}
    atomic_write_text(folder / "scores.json", json.dumps(report, indent=2))
    ctx.artifact("scores", folder / "scores.json")
    ctx.progress(3, 3, "done")
    return {"recommended_epoch": choice.epoch, "recommended_weight": choice.weight,
            "explanation": choice.explanation, "grids": len(written)}


def _tag_samples(samples: list[Sample], options: TagOptions) -> list[list[str]]:
    tagger = Tagger.open(options.model, options.cache_dir)
    captioner = Captioner(tagger.table, options)
    found = []
    for sample in samples:
        probabilities = tagger.predict(prepare(sample.image, tagger.size)[None])[0]
        found.append(captioner.tags(probabilities))
    return found


def _scores(samples: list[Sample], tags: list[list[str]], character_tags: list[str]) -> list[CellScore]:
    base = {(s.prompt, s.seed): (s, t) for s, t in zip(samples, tags) if s.weight == 0}
    fid: dict[tuple[str, float], list[float]] = defaultdict(list)
    lk: dict[tuple[str, float], list[float]] = defaultdict(list)
    for sample, found in zip(samples, tags):
        key = (sample.label, sample.weight)
        if sample.is_control:
            reference, reference_tags = base[(sample.prompt, sample.seed)]
            lk[key].append(leak(pixel_distance(sample.image, reference.image), tag_distance(found, reference_tags)))
        else:
            fid[key].append(fidelity(found, character_tags))
    return [CellScore(int(label.split()[-1]), weight, statistics.fmean(fid[(label, weight)] or [0.0]),
                      statistics.fmean(lk[(label, weight)] or [0.0]))
            for label, weight in sorted(set(fid) | set(lk), key=lambda k: (int(k[0].split()[-1]), k[1]))]

