"""The "train" job: a LoRA from the project's captioned pictures, per-epoch files registered as
artifacts, live progress (epoch, step, smoothed loss, lr, it/s, ETA).

params: base_model, prediction (None: what the model says), options (TrainOptions.to_dict()), trigger,
name. A re-run after an interruption resumes from the last saved epoch (the trainer starts fresh when
there is no saved state)."""
from __future__ import annotations

from typing import Any

from engine.jobs.context import JobContext
from engine.training.options import TrainOptions
from engine.training.trainer import Progress, TrainSpec, train


def run(ctx: JobContext) -> dict[str, Any]:
    params = ctx.params
    spec = TrainSpec(
        project_dir=ctx.project_dir, name=params["name"], base_model=params["base_model"],
        prediction=params.get("prediction"),
        options=TrainOptions.from_saved(params["options"]), trigger=params.get("trigger", ""),
        class_name=params.get("class_name", ""),
        resume=True, log=ctx.log, on_epoch_saved=lambda path: ctx.artifact("lora-epoch", path),
        on_file_moved=ctx.artifact_moved,
    )

    def report(progress: Progress) -> None:
        resumed = (f" (went on after the saved epoch {progress.resumed_from_epoch})"
                   if progress.resumed_from_epoch else "")
        ctx.progress(progress.step, progress.total_steps, f"epoch {progress.epoch}{resumed}", epoch=progress.epoch,
                     loss=progress.loss, lr=progress.lr, it_s=progress.it_s, eta_s=progress.eta_s)

    result = train(spec, report)
    ctx.artifact("lora", result.final_path)
    return {
        "file": result.final_path.name, "epochs_kept": len(result.epoch_paths), "steps": result.total_steps,
        "final_loss": round(result.final_loss, 5), "it_s": round(result.steps_per_second, 2),
        **({"resumed_from_epoch": result.resumed_from_epoch} if result.resumed_from_epoch else {}),
    }
