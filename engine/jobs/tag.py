"""The "tag" job: WD14-tag a project's training pictures (dataset/) and class pictures (reg/), write
`<stem>.txt` captions beside them, and return the captions (the engine stores them in the database).

params: model, cache_dir, general_threshold, character_threshold, include_ratings, blacklist,
batch_size (absent or null: the [tagger] defaults), trigger (put first in every caption), and kinds
(["train", "reg"] by default)."""
from __future__ import annotations

from typing import Any

from engine.jobs.context import JobContext, JobFailed
from engine.tagging import TaggerError
from engine.tagging.analyze import analyze
from engine.tagging.model import CPU, CUDA, Tagger
from engine.tagging.options import TagOptions
from engine.tagging.run import list_images, tag_folder

FOLDERS = {"train": "dataset", "reg": "reg"}
TOP_TAGS = 20


def run(ctx: JobContext) -> dict[str, Any]:
    try:
        return _run(ctx)
    except TaggerError as exc:
        raise JobFailed(str(exc)) from None


def _run(ctx: JobContext) -> dict[str, Any]:
    params = ctx.params
    options = TagOptions.from_params(params)
    trigger = params.get("trigger") or None
    kinds = params.get("kinds") or list(FOLDERS)
    unknown = [kind for kind in kinds if kind not in FOLDERS]
    if unknown:
        raise JobFailed(f"unknown picture set(s) {unknown} to tag (known: {', '.join(FOLDERS)})")
    folders = {kind: ctx.project_dir / FOLDERS[kind] for kind in kinds}
    total = sum(len(list_images(folder)) for folder in folders.values())
    if total == 0:
        raise JobFailed("there are no pictures to tag: add pictures to the project first")

    ctx.progress(0, total, "loading the tagger")
    tagger = Tagger.open(options.model, options.cache_dir)
    ctx.log(provider_message(tagger.provider), level="info" if tagger.provider == CUDA else "warning")
    captions: dict[str, dict[str, str]] = {}
    done = 0
    for kind, folder in folders.items():
        def report(step: int, _folder_total: int, base: int = done) -> None:
            ctx.progress(base + step, total, "tagging…", provider=tagger.provider)

        # Only training captions carry the trigger: reg pictures teach the class, not the character.
        captions[kind] = tag_folder(folder, options, trigger if kind == "train" else None, report, tagger=tagger)
        done += len(captions[kind])
    top = analyze(list(captions.get("train", {}).values()), trigger)[:TOP_TAGS]
    return {
        "provider": tagger.provider,
        "images": done,
        "captions": captions,
        "top_tags": [[entry.tag, entry.count] for entry in top],
    }


def provider_message(provider: str) -> str:
    if provider == CUDA:
        return f"tagger running on {CUDA}"
    if provider == CPU:
        import onnxruntime

        if CUDA in onnxruntime.get_available_providers():
            return (f"tagger running on {CPU}: onnxruntime-gpu is installed but CUDA did not start "
                    "(check that its CUDA and cuDNN versions match the installed ones)")
        return f"tagger running on {CPU} — install onnxruntime-gpu for CUDA"
    return f"tagger running on {provider}"
