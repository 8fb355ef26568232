"""What a samples job left in the project's samples/ folder (scores.json and its pictures), read back for
the bot and the CLI: the recommendation, the score table, the files to post, and whether the samples
still show the LoRA files on disk (a later training replaces them)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import Invalid
from engine.samples.scores import CellScore

REPORT = "scores.json"


@dataclass(frozen=True)
class SampleResults:
    project: str
    recommended_epoch: int
    recommended_weight: float
    explanation: str
    max_leak: float
    scores: list[CellScore]              # every epoch's, or only `epoch`'s
    files: list[Path]                    # heat map, grids, other base models' grids (or one epoch's grid)
    models: list[str]                    # extra base models the recommended epoch was shown on
    skipped_models: list[tuple[str, str]]  # (model, why)
    epoch: int | None                    # the epoch asked for; None = all
    current: bool                        # False: the LoRA was trained again after these samples


def read_report(folder: Path) -> dict[str, Any] | None:
    path = folder / REPORT
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def samples_match(report: dict[str, Any], epoch_hashes: dict[int, str]) -> bool:
    """True when every epoch file the report sampled is still the same file on disk (by sha256)."""
    sampled = report.get("sampled_files") or {}
    return bool(sampled) and all(epoch_hashes.get(int(epoch)) == digest for epoch, digest in sampled.items())


def sample_results(project: str, folder: Path, report: dict[str, Any], *, epoch: int | None,
                   epoch_hashes: dict[int, str]) -> SampleResults:
    scores = [CellScore(**row) for row in report["scores"]]
    if epoch is None:
        names = [report["heatmap"], *report["grids"], *(n for m in report["models"] for n in m["grids"])]
    else:
        sampled = sorted({s.epoch for s in scores})
        if epoch not in sampled:
            raise Invalid(f"{project}'s samples have no epoch {epoch}: the sampled epochs are "
                           f"{', '.join(map(str, sampled))}")
        names = report["epoch_grids"][str(epoch)]
        scores = [s for s in scores if s.epoch == epoch]
    best = report["recommended"]
    return SampleResults(
        project=project, recommended_epoch=best["epoch"], recommended_weight=best["weight"],
        explanation=report["explanation"], max_leak=report["max_leak"], scores=scores,
        files=[folder / name for name in names if (folder / name).is_file()],
        models=[m["model"] for m in report["models"]],
        skipped_models=[(m["model"], m["reason"]) for m in report["skipped_models"]],
        epoch=epoch, current=samples_match(report, epoch_hashes))
