"""The "samples" job: every kept epoch × each LoRA weight × fixed prompts and seeds, rendered with
the base model loaded once; the tagger reads every sample; fidelity and leak per epoch × weight; a
recommended epoch and weight; labelled grids sized for Discord (one per prompt, one per epoch), a heat
map of the scores, and the recommended epoch shown on the configured extra base models. Everything is
written to the project's samples/, described by samples/scores.json.

params: base_model, name, trigger, class_name, frequent_tags (in half the dataset's captions or more),
pruned_tags, tagger (TagOptions fields), weights, seeds, steps, guidance, size (0 = the base model's
training resolution), max_bytes, max_leak, extra_models, and prediction (optional: the base model's forced
prediction type, as for training)."""
from __future__ import annotations

import dataclasses
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from engine.errors import SetupError
from engine.jobs.context import JobContext, JobFailed
from engine.models import resolve_base_model
from engine.models.inference import preferred_device, release_gpu_memory
from engine.samples.grid import GridImage
from engine.samples.heatmap import heatmap_png
from engine.samples.render import OutOfMemory, Sample, SampleRenderer, SampleSpec, default_prompts, file_grid, grids
from engine.samples.scores import (
    CellScore,
    Recommendation,
    character_gain,
    fidelity,
    leak,
    pixel_distance,
    recommend,
    scored_tags,
)
from engine.tagging import TaggerError
from engine.tagging.model import Tagger
from engine.tagging.options import TagOptions
from engine.tagging.preprocess import prepare
from engine.tagging.tags import Captioner
from engine.training import lora_files
from engine.training.options import preset
from storage.layout import atomic_write_bytes, atomic_write_text, file_sha256

IMAGE_SUFFIXES = (".png", ".jpg")


def epoch_files(output: Path, name: str) -> dict[str, Path]:
    """label → file for each kept epoch (`<name>-NN.safetensors`), in epoch order."""
    return {_label(epoch): path for epoch, path in lora_files.epoch_files(output, name)}


def _label(epoch: int) -> str:
    return f"epoch {epoch}"


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
    extra_models: list[str] = params.get("extra_models", [])
    total = 4 + len(extra_models)
    ctx.progress(0, total, "loading the base model")
    info = resolve_base_model(params["base_model"], prediction=params.get("prediction"))
    size = params["size"] or preset(info.family, info.resolution).resolution
    prompts, controls = default_prompts(params["trigger"], params["class_name"])
    newest = next(reversed(files.values()))
    spec = SampleSpec(prompts=prompts, control_prompts=controls, weights=params["weights"], seeds=params["seeds"],
                      steps=params["steps"], guidance=params.get("guidance", 7.0), size=(size, size),
                      clip_skip=lora_files.lora_clip_skip(newest), batch_size=params.get("batch_size", 4))
    spec.check()
    device = preferred_device()
    renderer = SampleRenderer(info, device=device)
    ctx.progress(1, total, f"rendering {len(files)} epochs × {len(spec.weights)} weights at {size} px")
    try:
        samples = renderer.render(files, spec)
    except OutOfMemory as exc:
        raise JobFailed(f"{exc}; the trained epochs are kept, ask for the samples again") from None
    del renderer
    release_gpu_memory()  # one GPU: the tagger and the extra models come next
    ctx.progress(2, total, "reading the samples with the tagger")
    tags = _tag_samples(samples, TagOptions.from_params(params["tagger"]))
    # Jobs queued before "frequent_tags" carry "character_tags" (pruned + frequent): the same tags.
    frequent = params.get("frequent_tags", params.get("character_tags", []))
    character_tags = scored_tags(params.get("pruned_tags", []), frequent,
                                 [t for s, t in zip(samples, tags, strict=True) if s.weight == 0 and not s.is_control])
    scores = _scores(samples, tags, character_tags)
    choice = recommend(scores, max_leak=params["max_leak"])

    folder = ctx.project_dir / "samples"
    name, max_bytes = params["name"], params["max_bytes"]
    ctx.progress(3, total, "drawing the grids and the heat map")
    report: dict[str, Any] = {
        "scores": [dataclasses.asdict(s) for s in scores],
        "recommended": {"epoch": choice.epoch, "weight": choice.weight}, "explanation": choice.explanation,
        "max_leak": params["max_leak"], "base_model": params["base_model"], "character_tags": character_tags,
        # What was sampled, so a later training's files are not mistaken for these.
        "sampled_files": {str(epoch): file_sha256(files[_label(epoch)]) for epoch in sorted({s.epoch for s in scores})},
        "grids": _write(ctx, folder, "grid", grids(samples, title=name, max_bytes=max_bytes)),
        "epoch_grids": {
            str(epoch): _write(ctx, folder, f"epoch-{epoch:02d}",
                               file_grid(samples, _label(epoch), title=f"{name}: epoch {epoch}", max_bytes=max_bytes))
            for epoch in sorted({s.epoch for s in scores})},
        "heatmap": _write_heatmap(ctx, folder, scores, choice, params["max_leak"], name),
        "models": [], "skipped_models": [],
    }
    for index, model in enumerate(extra_models, start=1):
        ctx.progress(3 + index, total, f"epoch {choice.epoch} on {model}")
        # A local model is named by its file or folder in the title; a Hub id is already short and says more.
        shown_as = Path(model).name if Path(model).expanduser().exists() else model
        shown, reason = _on_other_model(model, info.family, files[_label(choice.epoch)], choice, spec, device,
                                        title=f"{name}: epoch {choice.epoch} on {shown_as}", max_bytes=max_bytes)
        if reason:
            ctx.log(f"extra model {model} skipped: {reason}", level="warning")
            report["skipped_models"].append({"model": model, "reason": reason})
        else:
            report["models"].append({"model": model, "grids": _write(ctx, folder, f"model-{index:02d}", shown)})
    atomic_write_text(folder / "scores.json", json.dumps(report, indent=2))
    ctx.artifact("scores", folder / "scores.json")
    _remove_stale_images(folder, report)
    ctx.progress(total, total, "done")
    return {"recommended_epoch": choice.epoch, "recommended_weight": choice.weight,
            "explanation": choice.explanation, "grids": len(report["grids"]),
            "models": [m["model"] for m in report["models"]]}


def _on_other_model(model: str, family: str, lora: Path, choice: Recommendation, spec: SampleSpec, device: str,
                    *, title: str, max_bytes: int) -> tuple[list[GridImage], str]:
    """The recommended epoch on another base model, at weight 0 and the recommended weight, trigger prompts
    only: (grid images, "") or ([], why it was skipped). A model that cannot be used is a note, not a
    failed job: the main results are already worth having."""
    try:
        info = resolve_base_model(model)
        if info.family != family:
            return [], (f"it is a {info.family.upper()} model and this LoRA was trained on {family.upper()}: "
                        "a LoRA only works on base models of its own family")
        renderer = SampleRenderer(info, device=device)
        try:
            label = _label(choice.epoch)
            samples = renderer.render({label: lora}, dataclasses.replace(
                spec, control_prompts=[], weights=sorted({0.0, choice.weight})))
            return file_grid(samples, label, title=title, max_bytes=max_bytes), ""
        finally:
            del renderer
            release_gpu_memory()
    # SetupError: not found or not loadable; ValueError: the LoRA does not fit its layers; RuntimeError:
    # out of GPU memory or a broken checkpoint — all about that one model, so skip it and go on.
    except (SetupError, ValueError, OSError, RuntimeError) as error:
        return [], str(error).splitlines()[0] if str(error) else type(error).__name__


def _write(ctx: JobContext, folder: Path, stem: str, images: list[GridImage]) -> list[str]:
    """Writes grid images as `<stem>-NN.png|jpg` (one image per grid part); returns their names."""
    names = []
    for index, grid in enumerate(images, start=1):
        path = folder / f"{stem}-{index:02d}.{'png' if grid.format == 'PNG' else 'jpg'}"
        atomic_write_bytes(path, grid.data)
        ctx.artifact("grid", path)
        names.append(path.name)
    return names


def _write_heatmap(ctx: JobContext, folder: Path, scores: list[CellScore], choice: Recommendation,
                   max_leak: float, name: str) -> str:
    path = folder / "heatmap.png"
    atomic_write_bytes(path, heatmap_png(scores, recommended=(choice.epoch, choice.weight), max_leak=max_leak,
                                         title=f"{name}: fidelity and leak per epoch and weight"))
    ctx.artifact("heatmap", path)
    return path.name


def _remove_stale_images(folder: Path, report: dict[str, Any]) -> None:
    """An earlier run may have written more grids (more epochs, more models): drop what this report does
    not list, so the folder holds one run's pictures."""
    listed = {report["heatmap"], *report["grids"], *(n for names in report["epoch_grids"].values() for n in names),
              *(n for model in report["models"] for n in model["grids"])}
    for path in folder.iterdir():
        if path.suffix in IMAGE_SUFFIXES and path.name not in listed:
            path.unlink(missing_ok=True)


def _tag_samples(samples: list[Sample], options: TagOptions) -> list[list[str]]:
    tagger = Tagger.open(options.model, options.cache_dir)
    captioner = Captioner(tagger.table, options)
    found = []
    for sample in samples:
        probabilities = tagger.predict(prepare(sample.image, tagger.size)[None])[0]
        found.append(captioner.tags(probabilities))
    return found


def _scores(samples: list[Sample], tags: list[list[str]], character_tags: list[str]) -> list[CellScore]:
    base = {(s.prompt, s.seed): (s, t) for s, t in zip(samples, tags, strict=True) if s.weight == 0}
    fid: dict[tuple[str, float], list[float]] = defaultdict(list)
    lk: dict[tuple[str, float], list[float]] = defaultdict(list)
    for sample, found in zip(samples, tags, strict=True):
        key = (sample.label, sample.weight)
        if sample.is_control:
            reference, reference_tags = base[(sample.prompt, sample.seed)]
            lk[key].append(leak(pixel_distance(sample.image, reference.image),
                                 character_gain(found, reference_tags, character_tags)))
        else:
            fid[key].append(fidelity(found, character_tags))
    return [CellScore(int(label.split()[-1]), weight, statistics.fmean(fid[(label, weight)] or [0.0]),
                      statistics.fmean(lk[(label, weight)] or [0.0]))
            for label, weight in sorted(set(fid) | set(lk), key=lambda k: (int(k[0].split()[-1]), k[1]))]
