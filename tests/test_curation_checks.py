"""Curation checks: trait suggestions, the trigger-word collision check, and the kohya-layout export."""
from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path, PurePosixPath

import pytest
from PIL import Image

from engine.curation.collision import MIN_REAL_VOCABULARY, SYLLABLES, check_trigger, common_words, tagger_tag_names
from engine.curation.export import ExportError, export_project
from engine.curation.suggest import suggest_traits, trait_category
from engine.devtools.tiny_models import write_clip_tokenizer, write_tiny_tagger
from engine.errors import Invalid
from engine.tagging.analyze import analyze
from engine.tagging.model import load_tags

# --- trait suggestions --------------------------------------------------------------------------------

# The seed's example: the tags the member pruned so that the trigger learned the character.
SEED_TRAITS = {
    "brown eyes": 20, "male focus": 20, "long hair": 19, "mature male": 18, "muscular": 17,
    "blonde hair": 16, "pectorals": 15, "muscular male": 14, "manly": 12, "large pectorals": 11,
}
# Just as frequent, but clothing, background, pose, expression or camera: never the character.
NOT_TRAITS = {
    "solo": 20, "1boy": 20, "looking at viewer": 16, "shirt": 15, "simple background": 14,
    "white background": 14, "smile": 13, "upper body": 12, "white shirt": 10, "closed mouth": 10,
    "hair ornament": 10, "closed eyes": 10,
}
RARE_TRAITS = {"beard": 4, "short hair": 2}   # traits, but in too few pictures at the default share


def _seed_captions() -> list[str]:
    counts = {**SEED_TRAITS, **NOT_TRAITS, **RARE_TRAITS}
    return [", ".join(["XingBar", *(tag for tag, n in counts.items() if i < n)]) for i in range(20)]


def test_seed_example_suggests_exactly_the_trait_tags() -> None:
    stats = analyze(_seed_captions(), "XingBar")
    suggestions = suggest_traits(stats)
    assert {s.tag for s in suggestions} == set(SEED_TRAITS)
    assert [s.share for s in suggestions] == sorted((s.share for s in suggestions), reverse=True)
    first = suggestions[0]
    assert first.share == 1.0 and first.count == 20 and first.tag in {"brown eyes", "male focus"}
    by_tag = {s.tag: s for s in suggestions}
    assert by_tag["long hair"].category == "hair" and by_tag["brown eyes"].category == "eyes"
    assert by_tag["pectorals"].category == "body" and by_tag["mature male"].category == "age"
    assert "probably the character" in by_tag["manly"].reason and "12 of 20" in by_tag["manly"].reason


def test_min_share_is_respected() -> None:
    stats = analyze(_seed_captions(), "XingBar")
    strict = {s.tag for s in suggest_traits(stats, min_share=0.6)}
    assert strict == {tag for tag, n in SEED_TRAITS.items() if n >= 12}   # 12/20 = 0.6 is in
    loose = {s.tag for s in suggest_traits(stats, min_share=0.1)}
    assert loose == set(SEED_TRAITS) | set(RARE_TRAITS)                     # still no clothing etc.
    assert suggest_traits(stats, min_share=1.0) and all(s.share == 1.0 for s in suggest_traits(stats, min_share=1.0))
    with pytest.raises(ValueError):
        suggest_traits(stats, min_share=0)


@pytest.mark.parametrize("tag, category", [
    ("aqua hair", "hair"), ("very long hair", "hair"), ("side ponytail", "hair"), ("ahoge", "hair"),
    ("blunt bangs", "hair"), ("heterochromia", "eyes"), ("light blue eyes", "eyes"), ("dark skin", "skin"),
    ("dark-skinned male", "skin"), ("abs", "body"), ("large breasts", "body"), ("tall", "body"),
    ("facial hair", "face"), ("freckles", "face"), ("mole under eye", "face"), ("old man", "age"),
    ("animal ears", "species"), ("fox tail", "species"), ("horns", "species"), ("bat wings", "species"),
    ("blonde_hair", "hair"),
    ("hairclip", None), ("hair ribbon", None), ("wet hair", None), ("fake animal ears", None),
    ("half-closed eyes", None), ("raised eyebrows", None), ("grey background", None), ("1girl", None),
    ("glasses", None), ("looking at viewer", None), ("cowboy shot", None), ("^_^", None),
])
def test_trait_patterns(tag: str, category: str | None) -> None:
    assert trait_category(tag) == category


# --- trigger collision check -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny byte-level CLIP tokenizer plus merges that make "xing" and "cat" whole-word tokens,
    as the real vocabulary has them; "xingbar" then still falls apart into pieces."""
    folder = tmp_path_factory.mktemp("clip") / "tokenizer"
    write_clip_tokenizer(folder)
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    for token in ("xi", "xin", "xing</w>", "ca", "cat</w>"):
        vocab[token] = len(vocab)
    # Entries no merge ever makes, so the check takes it for a real vocabulary (it skips toy-sized ones).
    while len(vocab) < MIN_REAL_VOCABULARY:
        vocab[f"unused{len(vocab)}</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\nx i\nxi n\nxin g</w>\nc a\nca t</w>\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tagger_tags(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    folder = write_tiny_tagger(tmp_path_factory.mktemp("tagger"))
    return tagger_tag_names(load_tags(folder / "selected_tags.csv"))


def test_single_clip_token_is_flagged_and_the_seed_fix_is_safe(clip_dir: Path, tagger_tags: set[str]) -> None:
    report = check_trigger("Xing", tagger_tags=tagger_tags, tokenizer_dir=clip_dir)
    assert not report.safe and len(report.problems) == 1
    assert "xing</w>" in report.problems[0] and report.skipped == []
    assert report.suggestion == "Xing" + SYLLABLES[0]
    assert check_trigger(report.suggestion, tagger_tags=tagger_tags, tokenizer_dir=clip_dir).safe

    safe = check_trigger("XingBar", tagger_tags=tagger_tags, tokenizer_dir=clip_dir)
    assert safe.safe and safe.problems == [] and safe.suggestion is None and safe.skipped == []


def test_tagger_tag_is_flagged(clip_dir: Path, tagger_tags: set[str]) -> None:
    for trigger in ("Blonde_Hair", "hatsune_miku", "muscular", "artoria_pendragon"):
        report = check_trigger(trigger, tagger_tags=tagger_tags, tokenizer_dir=clip_dir)
        assert not report.safe
        assert any("tag the tagger already writes" in problem for problem in report.problems), trigger
        assert report.suggestion is not None
        assert check_trigger(report.suggestion, tagger_tags=tagger_tags, tokenizer_dir=clip_dir).safe
    # Without the tag list the same word is only checked against the other sources.
    assert check_trigger("hatsune_miku", tagger_tags=None, tokenizer_dir=clip_dir).safe


def test_common_word_is_flagged_even_without_model_files() -> None:
    assert "castle" in common_words() and len(common_words()) > 2000
    for trigger in ("Castle", "castles", "Knight"):
        report = check_trigger(trigger, tagger_tags=None, tokenizer_dir=None)
        assert not report.safe and "everyday English word" in report.problems[0]
        assert len(report.skipped) == 2   # the member is told what could not be checked
        assert check_trigger(report.suggestion, tagger_tags=None, tokenizer_dir=None).safe


def test_several_problems_and_a_suggestion_that_passes_them_all(clip_dir: Path, tagger_tags: set[str]) -> None:
    report = check_trigger("cat", tagger_tags=tagger_tags | {"cat"}, tokenizer_dir=clip_dir)
    assert len(report.problems) == 3 and not report.safe
    again = check_trigger(report.suggestion, tagger_tags=tagger_tags | {"cat"}, tokenizer_dir=clip_dir)
    assert again.safe
    # Deterministic: the same trigger always gets the same suggestion.
    assert check_trigger("cat", tagger_tags=None, tokenizer_dir=clip_dir).suggestion == report.suggestion


def test_unusable_trigger_and_missing_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(Invalid):
        check_trigger("Xing,Bar", tagger_tags=None, tokenizer_dir=None)
    report = check_trigger("XingBar", tagger_tags=set(), tokenizer_dir=tmp_path / "missing")
    assert report.safe and len(report.skipped) == 1 and "does not exist" in report.skipped[0]
    assert report.lines()[0] == "✅ No problem found by the checks that could run."
    assert report.lines()[1].startswith("ℹ️ Not checked: the base model's tokenizer folder")


def test_a_toy_vocabulary_is_not_taken_for_a_real_one(tiny_models) -> None:
    """The tiny model's tokenizer knows a few hundred pieces: that a word is not one of them says nothing
    about what a real CLIP means by it, so the check is reported as not run instead of "safe"."""
    report = check_trigger("cat", tagger_tags=set(), tokenizer_dir=tiny_models.sd15 / "tokenizer")
    [why] = report.skipped
    assert "a test or toy vocabulary, not CLIP's 49,408" in why and "entries" in why
    assert any(line.startswith("ℹ️ Not checked") for line in report.lines())


# --- export ---------------------------------------------------------------------------------------------------


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "users" / "1001" / "XingBar30"
    dataset, reg = root / "dataset", root / "reg"
    for folder in (dataset, reg, root / "output", root / "samples"):
        folder.mkdir(parents=True)
    for i in range(3):
        (dataset / f"000{i}_pic.png").write_bytes(_png((i * 40, 0, 0)))
    (dataset / "0000_pic.txt").write_text("XingBar, 1boy, smile", encoding="utf-8")
    (dataset / "0001_pic.txt").write_text("XingBar, 1boy, shirt", encoding="utf-8")
    (dataset / ".0003_pic.png.x1.tmp").write_bytes(b"half-written")   # an interrupted write: left out
    (dataset / "notes.md").write_text("not a picture", encoding="utf-8")
    for i in range(2):
        (reg / f"000{i}_reg.png").write_bytes(_png((0, i * 40, 0)))
        (reg / f"000{i}_reg.txt").write_text("1boy, solo", encoding="utf-8")
    return root


def test_export_writes_the_kohya_layout(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "exports" / "XingBar30.zip"
    summary = export_project(project, name="XingBar30", trigger="XingBar", class_name="man", repeats=10, out=out)
    assert (summary.path, summary.images, summary.reg_images, summary.uncaptioned) == (out, 3, 2, 1)
    assert summary.size_bytes == out.stat().st_size and sorted(os.listdir(out.parent)) == ["XingBar30.zip"]
    with zipfile.ZipFile(out) as archive:
        assert archive.testzip() is None
        names = set(archive.namelist())
        assert names == {
            "img/10_XingBar man/0000_pic.png", "img/10_XingBar man/0000_pic.txt",
            "img/10_XingBar man/0001_pic.png", "img/10_XingBar man/0001_pic.txt",
            "img/10_XingBar man/0002_pic.png",
            "reg/1_man/0000_reg.png", "reg/1_man/0000_reg.txt", "reg/1_man/0001_reg.png", "reg/1_man/0001_reg.txt",
            "README.txt",
        }
        for name in names:   # nothing can land outside the folder it is unpacked into
            path = PurePosixPath(name)
            assert not path.is_absolute() and ".." not in path.parts and "\\" not in name
        assert archive.read("img/10_XingBar man/0001_pic.png") == (project / "dataset" / "0001_pic.png").read_bytes()
        assert archive.read("img/10_XingBar man/0000_pic.txt") == b"XingBar, 1boy, smile"
        readme = archive.read("README.txt").decode("utf-8")
    assert "img/10_XingBar man/" in readme and "reg/1_man/" in readme and "sd-scripts" in readme
    assert "1 of them have no caption" in readme and "--output_name XingBar30" in readme


def test_export_without_reg_images_and_other_repeats(project: Path, tmp_path: Path) -> None:
    for path in (project / "reg").iterdir():
        path.unlink()
    out = tmp_path / "x.zip"
    summary = export_project(project, name="XingBar30", trigger="XingBar", class_name="1girl", repeats=3,
                             reg_repeats=2, out=out)
    assert summary.reg_images == 0
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
    assert all(n.startswith("img/3_XingBar 1girl/") or n == "README.txt" for n in names) and len(names) == 6


@pytest.mark.parametrize("changes", [
    {"repeats": 0}, {"repeats": 101}, {"repeats": True}, {"reg_repeats": 0},
    {"trigger": "../../evil"}, {"trigger": "..\\evil"}, {"trigger": "a:b"}, {"class_name": "man/../../x"},
    {"class_name": "man."}, {"trigger": "Xing Bar"}, {"name": "../x"},
])
def test_export_refuses_bad_input(project: Path, tmp_path: Path, changes: dict) -> None:
    args = {"name": "XingBar30", "trigger": "XingBar", "class_name": "man", "repeats": 10, **changes}
    out = tmp_path / "out" / "x.zip"
    with pytest.raises(Invalid):
        export_project(project, out=out, **args)
    assert not out.exists()


def test_export_of_an_empty_project_is_refused(tmp_path: Path) -> None:
    (tmp_path / "p" / "dataset").mkdir(parents=True)
    with pytest.raises(Invalid, match="no training pictures"):
        export_project(tmp_path / "p", name="p", trigger="XingBar", class_name="man", repeats=10,
                       out=tmp_path / "x.zip")


@pytest.mark.parametrize("breakage", ["directory", "dangling link"])
def test_export_is_atomic(project: Path, tmp_path: Path, breakage: str) -> None:
    out = tmp_path / "exports" / "XingBar30.zip"
    out.parent.mkdir()
    out.write_bytes(b"the previous export")
    bad = project / "reg" / "0009_broken.png"   # packed last: the zip is mostly written when it fails
    if breakage == "directory":
        bad.mkdir()
    else:
        bad.symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(ExportError, match="0009_broken.png"):
        export_project(project, name="XingBar30", trigger="XingBar", class_name="man", repeats=10, out=out)
    assert out.read_bytes() == b"the previous export"
    assert os.listdir(out.parent) == ["XingBar30.zip"]   # no temp file left behind
