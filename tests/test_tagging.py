"""WD14 tagging: preprocessing against an independent kohya-recipe reference, tag selection on known
probabilities, the real tiny ONNX tagger on a folder, model resolution (local, broken, offline Hub),
the tag job end to end, and tag statistics."""
from __future__ import annotations

import io
import json
import socket
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from engine.devtools.tiny_models import write_tiny_tagger
from engine.jobs import tag as tag_job
from engine.jobs.context import JobContext, JobFailed, JobSpec
from engine.tagging import TaggerError
from engine.tagging.analyze import TagCount, analyze
from engine.tagging.model import CPU, CUDA, Tagger, TaggerFiles, load_tags, resolve_model
from engine.tagging.options import TagOptions
from engine.tagging.preprocess import load_rgb, prepare
from engine.tagging.run import list_images, predict_batches, tag_folder
from engine.tagging.tags import Captioner, underscore_rule

TRIGGER = "XingBar"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_tagger(tmp_path_factory.mktemp("tagger"))


@pytest.fixture(scope="module")
def tiny_batch1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_tagger(tmp_path_factory.mktemp("tagger-b1"), batch=1)


def _noise(rng: np.random.Generator, height: int, width: int, channels: int) -> np.ndarray:
    return rng.integers(0, 256, (height, width, channels), dtype=np.uint8)


def _write_pictures(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Mixed sizes and modes, smooth enough that the tiny tagger's 8×8 colour grid varies."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        height, width = (int(v) for v in rng.integers(120, 900, 2))
        blocks = np.kron(_noise(rng, 4, 4, 3), np.ones((height // 4 + 1, width // 4 + 1, 1), np.uint8))
        image = Image.fromarray(blocks[:height, :width])
        if i % 3 == 1:
            image.putalpha(Image.fromarray(_noise(rng, height, width, 1)[..., 0]))
        path = folder / (f"pic{i:02d}.png" if i % 3 != 2 else f"pic{i:02d}.jpg")
        image.save(path)
        paths.append(path)
    return paths


# --- preprocessing ---------------------------------------------------------------------------------


def reference_input(path: Path, size: int) -> np.ndarray:
    """Written straight from the kohya recipe, sharing no code with engine.tagging.preprocess: OpenCV's
    INTER_AREA to shrink, Pillow's Lanczos to enlarge."""
    image = Image.open(path)
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA")).astype(np.float64)
        alpha = rgba[..., 3:] / 255.0
        rgb = np.round(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    else:
        rgb = np.asarray(image.convert("RGB"))
    height, width = rgb.shape[:2]
    side = max(height, width)
    pad_x, pad_y = side - width, side - height
    left, top = pad_x // 2, pad_y // 2
    square = np.pad(rgb, ((top, pad_y - top), (left, pad_x - left), (0, 0)), constant_values=255)
    if side > size:
        square = _area_average(square, size)
    elif side < size:
        square = np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.LANCZOS))
    return square[..., ::-1].astype(np.float32)


def _area_average(square: np.ndarray, size: int) -> np.ndarray:
    """sd-scripts' own call (library/utils.py resize_image when shrinking)."""
    import cv2

    return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)


def _palette_with_transparency(rng: np.random.Generator) -> Image.Image:
    image = Image.fromarray(rng.integers(0, 16, (150, 260), dtype=np.uint8), mode="L").convert("P")
    image.putpalette([v for i in range(256) for v in (i * 16 % 256, 255 - i * 16 % 256, 40)])
    image.info["transparency"] = 3
    return image


PICTURES = {
    "rgba_wide_enlarge": lambda rng: Image.fromarray(_noise(rng, 200, 301, 4), "RGBA"),
    "rgba_shrink": lambda rng: Image.fromarray(_noise(rng, 700, 900, 4), "RGBA"),
    "rgb_tall_shrink": lambda rng: Image.fromarray(_noise(rng, 777, 240, 3)),
    "rgb_wide_enlarge": lambda rng: Image.fromarray(_noise(rng, 131, 400, 3)),
    "rgb_exact_side": lambda rng: Image.fromarray(_noise(rng, 448, 448, 3)),
    "la_tall": lambda rng: Image.fromarray(_noise(rng, 500, 333, 2), "LA"),
    "palette_transparency": _palette_with_transparency,
    "greyscale": lambda rng: Image.fromarray(_noise(rng, 90, 90, 1)[..., 0], "L"),
}


@pytest.mark.parametrize("size", [448, 64])
@pytest.mark.parametrize("name", sorted(PICTURES))
def test_preprocessing_matches_the_kohya_recipe(tmp_path: Path, name: str, size: int) -> None:
    path = tmp_path / f"{name}.png"
    PICTURES[name](np.random.default_rng(len(name))).save(path)
    ours = prepare(load_rgb(path), size)
    assert ours.shape == (size, size, 3) and ours.dtype == np.float32
    # Within 1/255: a mean that falls on .5 may round either way in floating point (so may OpenCV's).
    assert np.abs(ours - reference_input(path, size)).max() <= 1


def test_padding_is_white_and_centred_in_bgr(tmp_path: Path) -> None:
    image = Image.new("RGB", (100, 40), (255, 0, 0))  # red, wide: padded above and below
    out = prepare(image, 100)
    assert (out[:30] == 255).all() and (out[70:] == 255).all()
    assert (out[30:70] == [0, 0, 255]).all()  # BGR


def test_exif_rotation_is_not_applied_the_stored_pixels_are_tagged(tmp_path: Path) -> None:
    """Intake stores pictures upright; the tagger must see exactly what the trainer will read."""
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(_noise(np.random.default_rng(1), 120, 300, 3)).save(path, exif=exif, quality=95)
    assert Image.open(path).getexif()[0x0112] == 6
    assert load_rgb(path).size == (300, 120)
    assert np.abs(prepare(load_rgb(path), 448) - reference_input(path, 448)).max() <= 1


def test_unreadable_picture_is_named(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(TaggerError, match="broken.png"):
        load_rgb(tmp_path / "broken.png")


# --- tag selection ---------------------------------------------------------------------------------


def _probabilities(tiny: Path, **by_name: float) -> tuple[np.ndarray, object]:
    table = load_tags(tiny / "selected_tags.csv")
    probabilities = np.zeros(len(table), dtype=np.float32)
    for name, value in by_name.items():
        probabilities[table.names.index(name)] = value
    return probabilities, table


KNOWN = {
    "general": 0.10, "sensitive": 0.70, "questionable": 0.20, "explicit": 0.0,  # ratings
    "long_hair": 0.90, "smile": 0.50, "^_^": 0.60, "1boy": 0.95, "black_hair": 0.35,  # 0.35: at threshold
    "blue_eyes": 0.34, "virtual_youtuber": 0.99, "hatsune_miku": 0.90, "kirito": 0.80,
}


def test_underscore_rule() -> None:
    assert underscore_rule("long_hair") == "long hair"
    assert underscore_rule("^_^") == "^_^" and underscore_rule(">_<") == ">_<"
    assert underscore_rule("1boy") == "1boy"


def test_default_selection_order_thresholds_blacklist(tiny: Path) -> None:
    probabilities, table = _probabilities(tiny, **KNOWN)
    tags = Captioner(table, TagOptions()).tags(probabilities)
    # character first, then general by confidence; no ratings, blue_eyes under 0.35, kirito under 0.85,
    # virtual_youtuber blacklisted as "virtual youtuber".
    assert tags == ["hatsune miku", "1boy", "long hair", "^_^", "smile", "black hair"]


def test_ratings_only_the_top_one_first_when_asked(tiny: Path) -> None:
    probabilities, table = _probabilities(tiny, **KNOWN)
    tags = Captioner(table, TagOptions(include_ratings=True)).tags(probabilities, TRIGGER)
    assert tags[:3] == [TRIGGER, "sensitive", "hatsune miku"]
    assert not {"general", "questionable", "explicit"} & set(tags)


def test_threshold_above_one_disables_a_category(tiny: Path) -> None:
    probabilities, table = _probabilities(tiny, **{**KNOWN, "hatsune_miku": 1.0, "1boy": 1.0})
    assert "hatsune miku" not in Captioner(table, TagOptions(character_threshold=1.01)).tags(probabilities)
    assert Captioner(table, TagOptions(general_threshold=1.5)).tags(probabilities) == ["hatsune miku"]


def test_blacklist_is_compared_after_the_underscore_rule(tiny: Path) -> None:
    probabilities, table = _probabilities(tiny, **KNOWN)
    tags = Captioner(table, TagOptions(blacklist=("long_hair", " Smile "))).tags(probabilities)
    assert "long hair" not in tags and "smile" not in tags
    assert "virtual youtuber" in tags  # the default list was replaced, not extended


def test_trigger_first_and_not_repeated(tiny: Path) -> None:
    probabilities, table = _probabilities(tiny, **KNOWN)
    captioner = Captioner(table, TagOptions())
    expected = f"{TRIGGER}, hatsune miku, 1boy, long hair, ^_^, smile, black hair"
    assert captioner.caption(probabilities, TRIGGER) == expected
    tags = captioner.tags(probabilities, "Hatsune Miku")
    assert tags[0] == "Hatsune Miku" and "hatsune miku" not in tags
    assert captioner.tags(np.zeros_like(probabilities), TRIGGER) == [TRIGGER]
    assert captioner.caption(np.zeros_like(probabilities)) == ""


def test_bad_options_say_which() -> None:
    with pytest.raises(TaggerError, match="general_threshold"):
        TagOptions(general_threshold=float("nan"))
    with pytest.raises(TaggerError, match="batch_size"):
        TagOptions.from_params({"batch_size": 0})


# --- the tiny ONNX tagger on a folder ---------------------------------------------------------------


def test_tag_folder_writes_captions_batched_equals_one_at_a_time(tiny: Path, tiny_batch1: Path, tmp_path: Path) -> None:
    pictures = _write_pictures(tmp_path / "dataset", 7)
    progress: list[tuple[int, int]] = []
    captions = tag_folder(tmp_path / "dataset", TagOptions(model=str(tiny), batch_size=3), TRIGGER,
                          lambda done, total: progress.append((done, total)))
    assert progress == [(3, 7), (6, 7), (7, 7)]
    assert sorted(captions) == sorted(p.name for p in pictures)
    for picture in pictures:
        assert picture.with_suffix(".txt").read_text(encoding="utf-8") == captions[picture.name]
        assert captions[picture.name].startswith(TRIGGER)
    assert sum(caption.count(",") for caption in captions.values()) > 7  # the tagger really tagged

    one = Tagger.open(str(tiny), "")
    assert one.provider == (CPU if CUDA not in ort.get_available_providers() else one.session.get_providers()[0])
    assert (one.size, one.fixed_batch) == (448, None)
    batched = np.concatenate([probs for _, probs in predict_batches(one, pictures, 4)])
    single = np.concatenate([probs for _, probs in predict_batches(one, pictures, 1)])
    np.testing.assert_allclose(batched, single, atol=1e-6)
    assert tag_folder(tmp_path / "dataset", TagOptions(model=str(tiny), batch_size=1), TRIGGER,
                      lambda *_: None, tagger=one) == captions

    fixed = Tagger.open(str(tiny_batch1), "")
    assert fixed.fixed_batch == 1
    steps: list[int] = []
    # Same seed, same weights: the batch-1 model (fed one at a time despite batch_size 8) agrees.
    assert tag_folder(tmp_path / "dataset", TagOptions(model=str(tiny_batch1), batch_size=8), TRIGGER,
                      lambda done, _: steps.append(done), tagger=fixed) == captions
    assert steps == list(range(1, 8))


def test_list_images_skips_captions_temps_and_refuses_shared_stems(tmp_path: Path) -> None:
    assert list_images(tmp_path / "missing") == []
    for name in ("a.png", "b.JPG", "a.txt", ".a.png.123.tmp", "notes.md"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.JPG"]
    (tmp_path / "a.webp").write_bytes(b"")
    with pytest.raises(TaggerError, match="a.txt"):
        list_images(tmp_path)


# --- model resolution ------------------------------------------------------------------------------


def _fake_hub_cache(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """What huggingface_hub leaves behind after a download: refs/main → snapshots/<commit>/…"""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for name, data in files.items():
        (repo / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
        (repo / "snapshots" / commit / name).write_bytes(data)
    return repo


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Hub traffic: offline mode on (huggingface_hub reads the variable at import, so its constant
    is set too) and any socket connection fails the test."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def refuse(*_args: object) -> None:
        raise AssertionError("the test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_resolve_local_folder(tiny: Path) -> None:
    assert resolve_model(str(tiny), "") == TaggerFiles(tiny / "model.onnx", tiny / "selected_tags.csv")


def test_folder_without_model_says_what_to_put_there(tmp_path: Path, tiny: Path) -> None:
    (tmp_path / "selected_tags.csv").write_bytes((tiny / "selected_tags.csv").read_bytes())
    with pytest.raises(TaggerError, match=r"has no model\.onnx: put the tagger's model\.onnx and selected_tags\.csv"):
        resolve_model(str(tmp_path), "")
    with pytest.raises(TaggerError, match="neither a folder nor a Hugging Face repo id"):
        resolve_model(str(tmp_path / "not-there"), "")


def test_corrupt_model_file(tmp_path: Path, tiny: Path) -> None:
    (tmp_path / "selected_tags.csv").write_bytes((tiny / "selected_tags.csv").read_bytes())
    (tmp_path / "model.onnx").write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(TaggerError, match=r"model\.onnx is not a readable ONNX model .*: replace it"):
        Tagger.open(str(tmp_path), "")


def test_hub_id_offline_says_what_to_do(offline: None, tmp_path: Path) -> None:
    with pytest.raises(TaggerError) as caught:
        resolve_model("SmilingWolf/wd-vit-tagger-v3", str(tmp_path))
    assert str(caught.value) == (
        "could not download SmilingWolf/wd-vit-tagger-v3 (HF_HUB_OFFLINE is set): download model.onnx and "
        "selected_tags.csv into a folder and set [tagger] model to that folder")
    with pytest.raises(TaggerError, match="not a valid Hugging Face repo id"):
        resolve_model("someone/bad..name", str(tmp_path))


def test_hub_id_already_cached_needs_no_network(offline: None, tmp_path: Path, tiny: Path) -> None:
    files = {name: (tiny / name).read_bytes() for name in ("model.onnx", "selected_tags.csv")}
    _fake_hub_cache(tmp_path, "someone/tiny-tagger", files)
    tagger = Tagger.open("someone/tiny-tagger", str(tmp_path))
    assert len(tagger.table) == len(load_tags(tiny / "selected_tags.csv"))

    repo = _fake_hub_cache(tmp_path / "broken", "someone/tiny-tagger", {**files, "model.onnx": b"truncated"})
    with pytest.raises(TaggerError, match=f"delete {repo} so that it downloads again"):
        Tagger.open("someone/tiny-tagger", str(tmp_path / "broken"))


# --- the job ---------------------------------------------------------------------------------------


def _job(project: Path, **params: object) -> tuple[JobContext, io.StringIO]:
    out = io.StringIO()
    spec = JobSpec(job_id=1, kind="tag", entry="engine.jobs.tag:run", params=dict(params),
                   data_dir=str(project.parent), project_dir=str(project), attempt=1)
    return JobContext(spec, out), out


def test_tag_job_end_to_end(tmp_path: Path, tiny: Path) -> None:
    project = tmp_path / "XingBar30"
    _write_pictures(project / "dataset", 5)
    _write_pictures(project / "reg", 3, seed=1)
    ctx, out = _job(project, model=str(tiny), cache_dir="", general_threshold=0.35, character_threshold=0.85,
                    include_ratings=False, blacklist=[], batch_size=2, trigger=TRIGGER, kinds=["train", "reg"])
    result = tag_job.run(ctx)
    json.dumps(result)  # goes back to the engine as a JSON event

    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert {event["type"] for event in events} == {"progress", "log"}
    logs = [event["message"] for event in events if event["type"] == "log"]
    if CUDA not in ort.get_available_providers():  # the CPU build of onnxruntime, as in CI
        assert logs == ["tagger running on CPUExecutionProvider — install onnxruntime-gpu for CUDA"]
    tagging = [event for event in events if event["type"] == "progress" and event["message"] == "tagging…"]
    assert [(event["step"], event["total"]) for event in tagging] == [(2, 8), (4, 8), (5, 8), (7, 8), (8, 8)]
    assert all(event["provider"] == result["provider"] for event in tagging)
    assert result["provider"] in logs[0]
    assert result["images"] == 8
    assert sorted(result["captions"]) == ["reg", "train"]
    assert sorted(result["captions"]["train"]) == [f"pic{i:02d}.{'jpg' if i % 3 == 2 else 'png'}" for i in range(5)]
    assert len(result["captions"]["reg"]) == 3
    for kind, folder in (("train", "dataset"), ("reg", "reg")):
        for name, caption in result["captions"][kind].items():
            # Reg pictures teach the class, so only training captions carry the trigger.
            assert caption.startswith(TRIGGER) if kind == "train" else TRIGGER not in caption
            assert (project / folder / name).with_suffix(".txt").read_text(encoding="utf-8") == caption
    expected = analyze(list(result["captions"]["train"].values()), TRIGGER)[:20]
    assert result["top_tags"] == [[entry.tag, entry.count] for entry in expected] and result["top_tags"]


def test_tag_job_failures_are_member_facing(tmp_path: Path, tiny: Path) -> None:
    project = tmp_path / "empty"
    (project / "dataset").mkdir(parents=True)
    with pytest.raises(JobFailed, match="no pictures to tag"):
        tag_job.run(_job(project, model=str(tiny))[0])
    _write_pictures(project / "dataset", 1)
    with pytest.raises(JobFailed, match="neither a folder nor a Hugging Face repo id"):
        tag_job.run(_job(project, model=str(tmp_path / "nowhere"))[0])
    with pytest.raises(JobFailed, match="character_threshold"):
        tag_job.run(_job(project, model=str(tiny), character_threshold="high")[0])


# --- analyze ---------------------------------------------------------------------------------------


def test_analyze_counts_and_shares() -> None:
    captions = ["XingBar, 1boy, smile, smile", "XingBar, 1boy, long hair", "XingBar, hat, ,", "XingBar"]
    assert analyze(captions, TRIGGER) == [
        TagCount("1boy", 2, 0.5), TagCount("hat", 1, 0.25), TagCount("long hair", 1, 0.25), TagCount("smile", 1, 0.25),
    ]
    assert analyze([], None) == []
