"""A project's LoRA files on disk: the per-epoch names sd-scripts uses (`<name>-NN.safetensors`), which
are kept, and which model family a file was trained for (read from its metadata). No torch: the bot's
and the CLI's processes use this without loading it."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Literal

Family = Literal["sd15", "sdxl"]

_EPOCH_FILE = "{name}-{epoch:02d}.safetensors"


def epoch_file_name(name: str, epoch: int) -> str:
    """`<name>-01.safetensors` (two digits at least, like sd-scripts)."""
    return _EPOCH_FILE.format(name=name, epoch=epoch)


def epoch_number(path: Path, name: str) -> int | None:
    """N for `<name>-NN.safetensors`, None for any other file (the final `<name>.safetensors` included)."""
    match = re.fullmatch(rf"{re.escape(name)}-(\d+)\.safetensors", Path(path).name)
    return int(match[1]) if match else None


def epoch_files(folder: Path, name: str) -> list[tuple[int, Path]]:
    """The per-epoch files in `folder`, oldest epoch first."""
    found = [(epoch_number(entry, name), entry) for entry in Path(folder).iterdir() if entry.is_file()]
    return sorted((n, path) for n, path in found if n is not None)


def keep_last(folder: Path, name: str, n: int) -> list[Path]:
    """Delete all but the newest `n` per-epoch files `<name>-NN.safetensors` in `folder`; return the deleted.

    "Newest" is the highest epoch number. The final `<name>.safetensors` and other names are never touched.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    epochs = epoch_files(folder, name)
    doomed = [p for _, p in epochs[: max(0, len(epochs) - n)]]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed


def move_previous_run(folder: Path, name: str) -> list[tuple[Path, Path]]:
    """Moves a finished or abandoned run's files (`<name>-NN.safetensors` and `<name>.safetensors`) out of
    the way of a new run, into `previous/<when the newest was written>/`, names unchanged; returns
    (old, new) per file. They were handed out (download links, artifacts), so they are never deleted:
    the caller re-points what names them."""
    folder = Path(folder)
    final = folder / f"{name}.safetensors"
    files = [path for _, path in epoch_files(folder, name)] if folder.is_dir() else []
    files += [final] if final.is_file() else []
    if not files:
        return []
    written = time.strftime("%Y-%m-%d_%H%M%S", time.gmtime(max(path.stat().st_mtime for path in files)))
    target = folder / "previous" / written
    suffix = 1
    while target.exists():
        suffix += 1
        target = folder / "previous" / f"{written}_{suffix}"
    target.mkdir(parents=True)
    moved = []
    for path in files:
        path.replace(target / path.name)
        moved.append((path, target / path.name))
    return moved


def lora_metadata(path: Path) -> dict[str, str] | None:
    """A LoRA file's safetensors metadata (the `ss_*` keys sd-scripts writes); None when unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 - safetensors raises its own SafetensorError; a bad file says nothing
        return None


def lora_clip_skip(path: Path) -> int:
    """The clip skip a LoRA was trained with (`ss_clip_skip`; SDXL files say "None"): samples should use
    the same. 1 when the file does not say."""
    value = (lora_metadata(path) or {}).get("ss_clip_skip", "")
    return int(value) if value.isdigit() and 1 <= int(value) <= 12 else 1


def lora_family(path: Path) -> Family | None:
    """The model family a LoRA file was trained for, from its sd-scripts metadata (`ss_base_model_version`,
    else `modelspec.architecture`); None when the file is unreadable or does not say."""
    meta = lora_metadata(path)
    if meta is None:
        return None
    version = meta.get("ss_base_model_version", "")
    architecture = meta.get("modelspec.architecture", "")
    # sd-scripts writes "sdxl_base_v1-0" / "sd_v1" (and "sd_v2…" for SD 2, trained like SD 1.x here).
    if version.startswith("sdxl") or architecture.startswith("stable-diffusion-xl"):
        return "sdxl"
    if version.startswith("sd_v") or architecture.startswith("stable-diffusion-v"):
        return "sd15"
    return None


def trained_family(folder: Path, name: str) -> Family | None:
    """The family of the LoRA `name` in `folder` (a project's output/): read from the final file, else from
    the newest epoch file; None when there is none or it does not say."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    candidates = [folder / f"{name}.safetensors", *(path for _, path in reversed(epoch_files(folder, name)))]
    for path in candidates:
        if path.is_file():
            return lora_family(path)
    return None
