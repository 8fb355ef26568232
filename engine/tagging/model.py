"""The tagger model: find its files (local folder or Hugging Face Hub), read selected_tags.csv, open
an onnxruntime session on the best provider and say which one really runs.

onnxruntime and huggingface_hub are imported where they are used, so importing this module is cheap.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.tagging import TaggerError

MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
WD_INPUT_SIZE = 448  # the side every WD tagger uses; only for a model that leaves its side dynamic
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_MANUAL = "download model.onnx and selected_tags.csv into a folder and set [tagger] model to that folder"


@dataclass(frozen=True)
class TaggerFiles:
    model_path: Path
    tags_csv: Path


@dataclass(frozen=True)
class TagTable:
    """selected_tags.csv in file order, which is the order of the model's outputs. Rows are told
    apart by name: the four rating rows share one tag_id."""
    names: tuple[str, ...]
    categories: np.ndarray  # int per row: 9 rating, 0 general, 4 character (others are never used)

    def __len__(self) -> int:
        return len(self.names)


def resolve_model(model: str, cache_dir: str) -> TaggerFiles:
    """A folder holding model.onnx + selected_tags.csv, or a Hub repo id (downloaded once, cached)."""
    model = model.strip()
    folder = Path(model).expanduser()
    if folder.is_dir():
        files = TaggerFiles(folder / MODEL_FILE, folder / TAGS_FILE)
        for path in (files.model_path, files.tags_csv):
            if not path.is_file():
                raise TaggerError(f"the tagger folder {folder} has no {path.name}: put the tagger's "
                                  f"{MODEL_FILE} and {TAGS_FILE} in it (from e.g. "
                                  "https://huggingface.co/SmilingWolf/wd-vit-tagger-v3)")
        return files
    if not _REPO_ID.match(model):
        raise TaggerError(f"tagger model {model!r} is neither a folder nor a Hugging Face repo id "
                          "(like SmilingWolf/wd-vit-tagger-v3): check [tagger] model")
    return TaggerFiles(_download(model, MODEL_FILE, cache_dir), _download(model, TAGS_FILE, cache_dir))


def _download(repo_id: str, filename: str, cache_dir: str) -> Path:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        HFValidationError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
    )

    cache = cache_dir or None
    try:
        try:
            # The cache first: once downloaded, tagging needs no network, not even a "newer revision?" call.
            return Path(hf_hub_download(repo_id, filename, cache_dir=cache, local_files_only=True))
        except LocalEntryNotFoundError:
            return Path(hf_hub_download(repo_id, filename, cache_dir=cache))
    except RepositoryNotFoundError:
        raise TaggerError(f"Hugging Face has no public repo {repo_id} (misspelt, private or gated): "
                          f"check [tagger] model, or {_MANUAL}") from None
    except RemoteEntryNotFoundError:
        raise TaggerError(f"{repo_id} has no {filename}, so it is not a WD ONNX tagger: "
                          "set [tagger] model to one (e.g. SmilingWolf/wd-vit-tagger-v3)") from None
    except HFValidationError:
        raise TaggerError(f"{repo_id!r} is not a valid Hugging Face repo id: check [tagger] model") from None
    except (OSError, ValueError):
        # huggingface_hub turns every network failure into LocalEntryNotFoundError ("not in the cache").
        why = "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else "no internet?"
        raise TaggerError(f"could not download {repo_id} ({why}): {_MANUAL}") from None


def load_tags(path: Path) -> TagTable:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError) as exc:
        raise TaggerError(f"could not read {path} ({exc}): {_fix_hint(path)}") from None
    names, categories = [], []
    for line, row in enumerate(rows, start=2):
        try:
            names.append(row["name"].strip())
            categories.append(int(row["category"]))
        except (KeyError, AttributeError, TypeError, ValueError):
            raise TaggerError(f"{path} line {line} is not a tag_id,name,category,count row: "
                              f"{_fix_hint(path)}") from None
    if not names:
        raise TaggerError(f"{path} lists no tags: {_fix_hint(path)}")
    return TagTable(tuple(names), np.array(categories, dtype=np.int64))


def open_session(path: Path) -> tuple[Any, str]:
    """(session, the provider that really runs it). onnxruntime falls back to the CPU with only a
    warning when CUDA cannot start (e.g. missing cuDNN), so ask the session, not the provider list."""
    import onnxruntime as ort

    providers = [CUDA, CPU] if CUDA in ort.get_available_providers() else [CPU]
    options = ort.SessionOptions()
    # Between runs onnxruntime's idle CPU workers spin-wait by default, taking the cores from the
    # threads that prepare the next batch; measured 1.6× → 2× more images/s with spinning off.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own non-OSError types for bad files
        message = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise TaggerError(f"{path} is not a readable ONNX model ({message}): {_fix_hint(path)}") from None
    return session, session.get_providers()[0]


def _fix_hint(path: Path) -> str:
    """A broken file in the Hub cache must be deleted with its whole repo folder: deleting only the
    snapshot link would make the next download re-link the same broken blob."""
    cached = next((parent for parent in path.parents if parent.name.startswith("models--")), None)
    if cached is not None:
        return f"delete {cached} so that it downloads again"
    return f"replace it with the tagger's own {path.name}"


@dataclass
class Tagger:
    """An opened tagger: one session, reused for every batch."""
    session: Any
    provider: str
    input_name: str
    size: int                # input side, from the model (448 for WD taggers)
    fixed_batch: int | None  # None: any batch size (WD v3); else exactly this many (WD v2: 1)
    table: TagTable

    @classmethod
    def open(cls, model: str, cache_dir: str) -> Tagger:
        files = resolve_model(model, cache_dir)
        table = load_tags(files.tags_csv)
        session, provider = open_session(files.model_path)
        spec = session.get_inputs()[0]
        shape = list(spec.shape)
        if len(shape) != 4 or shape[3] != 3 or spec.type != "tensor(float)":
            raise TaggerError(f"{files.model_path} takes {spec.type} {shape}, not a batch of NHWC "
                              "float images: it is not a WD tagger")
        side = shape[1] if isinstance(shape[1], int) and shape[1] > 0 else WD_INPUT_SIZE
        fixed = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        outputs = session.get_outputs()[0].shape
        if len(outputs) == 2 and isinstance(outputs[1], int) and outputs[1] != len(table):
            raise TaggerError(f"{files.model_path} outputs {outputs[1]} tags but {files.tags_csv} lists "
                              f"{len(table)}: the two files belong to different models")
        return cls(session, provider, spec.name, side, fixed, table)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """(n, side, side, 3) float32 → (n, tags) probabilities in selected_tags.csv order."""
        count = len(images)
        if self.fixed_batch is not None and count < self.fixed_batch:
            padding = np.zeros((self.fixed_batch - count, *images.shape[1:]), dtype=images.dtype)
            images = np.concatenate([images, padding])
        probabilities = self.session.run(None, {self.input_name: images})[0][:count]
        if probabilities.shape[1] != len(self.table):
            raise TaggerError(f"the tagger outputs {probabilities.shape[1]} tags but its selected_tags.csv "
                              f"lists {len(self.table)}: the two files belong to different models")
        return probabilities
