"""The "reg" job: render a project's regularization (class) pictures with the base model, then tag them
with the WD14 tagger like the training pictures. The engine registers them when the job is done
(engine.reg.store), so the worker only writes files.

Pictures are rendered into `<project>/reg-pending/` in batches, one seed per picture, each file written
atomically and recorded in `reg/manifest.json` after it; a run after a cancel, a crash or a restart
renders only the pictures that are missing (engine.reg.spec explains the names).

Tagging happens here rather than in a tag job queued afterwards: a tag job re-captions the whole project,
training pictures included, which would overwrite captions the member has curated; here only the new
pictures are read, by the tagger the job already has at hand, and one status message covers it all.

params: RegSpec fields (engine.reg.spec) and tagger (TagOptions fields)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import SetupError
from engine.jobs.context import JobContext, JobFailed
from engine.jobs.tag import provider_message
from engine.models.inference import release_gpu_memory
from engine.reg.spec import Manifest, RegFolders, RegSpec, Work, survey
from engine.tagging import TaggerError
from engine.tagging.model import CUDA, Tagger
from engine.tagging.options import TagOptions
from engine.tagging.run import tag_files
from storage.layout import atomic_write_bytes


def run(ctx: JobContext) -> dict[str, Any]:
    from engine.reg.render import RenderFailed

    try:
        return _run(ctx)
    except (RenderFailed, SetupError) as error:
        raise JobFailed(str(error)) from None
    except TaggerError as error:
        raise JobFailed(f"the reg pictures were rendered but could not be tagged: {error}. Ask again once that "
                        "is fixed: the rendered pictures are kept and will not be rendered again") from None


def _run(ctx: JobContext) -> dict[str, Any]:
    spec = RegSpec.from_params(ctx.params)
    try:
        spec.check()
    except ValueError as error:
        raise JobFailed(str(error)) from None
    folders = RegFolders.of(ctx.project_dir)
    folders.pending.mkdir(parents=True, exist_ok=True)
    manifest = folders.manifest()
    _forget_other_work(spec, folders, manifest, ctx)
    work = survey(spec, folders, manifest)
    to_tag = sorted(work.pending + work.to_render)
    total = len(work.to_render) + len(to_tag)
    if work.registered:
        ctx.log(f"{len(work.registered)} of the {spec.count} pictures are already in the project")
    if work.pending:
        ctx.log(f"{len(work.pending)} pictures were rendered by an earlier run: only tagging them")

    if work.to_render:
        _render(ctx, spec, work, folders, manifest, total)
    captions: dict[str, str] = {}
    if to_tag:
        options = TagOptions.from_params(ctx.params.get("tagger") or {})
        ctx.progress(len(work.to_render), total, "loading the tagger")
        tagger = Tagger.open(options.model, options.cache_dir)
        ctx.log(provider_message(tagger.provider), level="info" if tagger.provider == CUDA else "warning")

        def report(step: int, _count: int) -> None:
            ctx.progress(len(work.to_render) + step, total, f"tagged {step} of {len(to_tag)} pictures")

        # Reg captions carry no trigger: these pictures teach the class, not the character.
        captions = tag_files([folders.pending / spec.filename(i) for i in to_tag], options, None, report,
                             tagger=tagger)
    ctx.progress(total, total, "done")
    return {
        "prompt": spec.prompt, "size": f"{spec.width}×{spec.height}", "pictures": spec.count,
        "rendered": len(work.to_render), "already_there": len(work.registered) + len(work.pending),
        "files": {spec.filename(i): {"caption": captions.get(spec.filename(i), ""), "seed": spec.seed_for(i)}
                  for i in to_tag},
    }


def _render(ctx: JobContext, spec: RegSpec, work: Work, folders: RegFolders, manifest: Manifest, total: int) -> None:
    from engine.reg.render import RegRenderer

    ctx.progress(0, total, "loading the base model")
    renderer = RegRenderer(spec)
    ctx.log(f"rendering {len(work.to_render)} pictures of {spec.width}×{spec.height} on {renderer.device}, "
            f"{spec.batch_size} at a time: {spec.prompt!r}")
    done = 0
    for start in range(0, len(work.to_render), spec.batch_size):
        batch = work.to_render[start:start + spec.batch_size]
        for index, png in zip(batch, renderer.render(spec, [spec.seed_for(i) for i in batch]), strict=True):
            # File first, then its manifest entry: a kill in between leaves a file that is redone.
            atomic_write_bytes(folders.pending / spec.filename(index), png)
            manifest.record(spec.filename(index), spec.entry(index))
            manifest.save()
            done += 1
            ctx.progress(done, total, f"rendered {done} of {len(work.to_render)} pictures")
    del renderer
    release_gpu_memory()  # before the tagger (onnxruntime) asks for its own


def _forget_other_work(spec: RegSpec, folders: RegFolders, manifest: Manifest, ctx: JobContext) -> None:
    """reg-pending/ holds only this request's work: pictures of an earlier request with other settings
    (cancelled, never registered) and temp files of interrupted writes are removed, and the manifest
    forgets files that exist nowhere any more (removed by the member, or just removed here)."""
    wanted = {Path(name).stem for name in spec.filenames()}
    stale = [path for path in folders.pending.iterdir() if path.is_file() and path.stem not in wanted]
    for path in stale:
        path.unlink(missing_ok=True)
    pictures = sum(path.suffix == ".png" for path in stale)
    if pictures:
        ctx.log(f"removed {pictures} unfinished pictures of an earlier request with other settings")
    if manifest.prune(lambda name: (folders.reg / name).is_file() or (folders.pending / name).is_file()):
        manifest.save()
