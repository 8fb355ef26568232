"""The toy world (engine/devtools/toy_world): its pictures and tags, its tokenizer, the shipped base model
and tagger loaded through the real loaders, and the build command."""
from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.devtools import toy_world
from engine.devtools.tiny_models import MODEL_MAX_LENGTH
from engine.devtools.toy_world import world
from engine.devtools.toy_world.tokenizer import world_words, write_toy_tokenizer
from engine.models import resolve_base_model
from engine.training.options import preset
from tests.helpers import lorabake


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from transformers import CLIPTokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    write_toy_tokenizer(folder)
    return CLIPTokenizer.from_pretrained(folder)


def test_every_world_word_is_one_token_and_other_words_split(tokenizer) -> None:
    for word in world_words():
        assert len(tokenizer.tokenize(word)) == 1, word
    # A trigger, like any word CLIP never saw, is spelled in several pieces.
    assert len(tokenizer.tokenize("xingbar")) >= 3
    assert len(tokenizer.tokenize("masterpiece")) >= 3
    assert tokenizer.tokenize("1girl, polka dot shirt") == ["1</w>", "girl</w>", ",</w>", "polka</w>", "dot</w>",
                                                           "shirt</w>"]


def test_the_longest_caption_with_a_trigger_fits_75_tokens(tokenizer) -> None:
    longest = max((world.random_figure(random.Random(n), pattern="polka dot") for n in range(50)),
                  key=lambda f: len(tokenizer.tokenize(world.caption(f))))
    ids = tokenizer(f"XingBar, {world.caption(longest)}").input_ids
    assert len(ids) <= MODEL_MAX_LENGTH and tokenizer.model_max_length == MODEL_MAX_LENGTH
    assert ids[-1] == tokenizer.eos_token_id  # not truncated


def test_world_is_deterministic_and_the_base_data_never_holds_the_character() -> None:
    figures = world.base_figures(3, 2000)
    assert figures == world.base_figures(3, 2000)
    assert figures != world.base_figures(4, 2000)
    character = world.CHARACTER
    traits = ("hair", "eyes", "build", "pattern")
    assert all(sum(f.value(a) == getattr(character, a) for a in traits) < 3 for f in figures)
    # Each trait alone does appear, rarely, so the base model can draw it when asked.
    for attribute in traits:
        share = sum(f.value(attribute) == getattr(character, attribute) for f in figures) / len(figures)
        assert 0.03 < share < 0.2, (attribute, share)


def test_character_pictures_show_the_character_in_varied_scenes() -> None:
    figures = world.character_figures(7, 12)
    assert all(world.CHARACTER.wears(f) for f in figures)
    assert len({f.background for f in figures}) == len(world.BACKGROUNDS)
    assert len({f.place for f in figures}) == len(world.PLACES)
    assert all(f.background not in (f.hair, f.shirt) for f in figures)
    assert all(set(world.CHARACTER.traits()) <= set(f.tags()) for f in figures)


def test_pictures_for_upload_shrink_back_to_the_drawn_picture() -> None:
    figure = world.character_figures(1, 1)[0]
    small = np.asarray(world.draw(figure))
    big = world.draw(figure, size=256)
    assert big.size == (256, 256)
    assert np.array_equal(np.asarray(big.resize((64, 64), Image.Resampling.BOX)), small)
    with pytest.raises(ValueError, match="multiples of 64"):
        world.draw(figure, size=100)


def test_tags_name_every_attribute_as_danbooru_does() -> None:
    figure = world.Figure(hair="purple", eyes="yellow", build="slim", shirt="red", pattern="striped",
                          background="blue", place="left side", count="1boy")
    assert figure.tags() == ["1boy", "solo", "purple hair", "yellow eyes", "slim", "red shirt", "striped shirt",
                             "blue background", "left side"]
    assert "striped shirt" not in dataclasses.replace(figure, pattern="plain").tags()
    assert set(figure.tags()) <= set(world.all_tags())
    with pytest.raises(ValueError, match="would hide"):
        world.random_figure(random.Random(0), background="blue", shirt="blue")


# --- the shipped models -------------------------------------------------------------------------------


def test_shipped_base_model_is_an_sd15_pipeline_at_64_px() -> None:
    paths = toy_world.shipped()
    info = resolve_base_model(str(paths.sd15))
    assert (info.family, info.prediction, info.resolution) == ("sd15", "v_prediction", 64)
    options = preset(info.family, info.resolution)
    assert (options.resolution, options.bucket_min, options.bucket_max) == (64, 64, 128)
    scheduler = json.loads((paths.sd15 / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["rescale_betas_zero_snr"] is True and scheduler["timestep_spacing"] == "trailing"
    total = sum(f.stat().st_size for f in paths.root.rglob("*") if f.is_file())
    assert total < 20 * 2**20


def test_shipped_tagger_reads_every_attribute_of_held_out_pictures() -> None:
    from engine.devtools.toy_world.tagger import ToyReader

    reader = ToyReader(toy_world.shipped().tagger)
    rng = random.Random(2024)   # not a seed the build used
    figures = [world.random_figure(rng) for _ in range(300)]
    accuracy = reader.accuracy([world.draw(f) for f in figures], figures)
    assert min(accuracy.values()) >= 0.95, accuracy
    uploads = [world.draw(f, size=256) for f in figures[:60]]   # as members upload them
    assert min(reader.accuracy(uploads, figures[:60]).values()) >= 0.95


def test_toy_world_command_shows_the_shipped_models_and_writes_pictures(tmp_path: Path) -> None:
    shown = lorabake(tmp_path, "dev", "toy-world", "show")
    assert shown.returncode == 0, shown.stderr
    assert f'sd15 = "{toy_world.shipped().sd15}"' in shown.stdout
    done = lorabake(tmp_path, "dev", "toy-world", "pictures", str(tmp_path / "pics"), "--count", "3", "--json")
    assert done.returncode == 0, done.stderr
    files = json.loads(done.stdout)["files"]
    assert len(files) == 3 and all(Image.open(f).size == (256, 256) for f in files)


def test_build_writes_models_that_load_through_the_real_loaders(tmp_path: Path) -> None:
    """The quick build trains for a few steps only: this proves the build runs and what it writes loads,
    not that it learns (the shipped models and bench/toy_quality.py show that)."""
    done = lorabake(tmp_path, "dev", "toy-world", "build", str(tmp_path / "toy"), "--quick", "--json", timeout=240)
    assert done.returncode == 0, done.stderr
    paths = json.loads(done.stdout)
    info = resolve_base_model(paths["sd15"])
    assert (info.family, info.prediction, info.resolution) == ("sd15", "v_prediction", 64)
    report = json.loads(Path(paths["report"]).read_text())
    assert set(report["drawing_accuracy"]) == set(world.ATTRIBUTES)
    from engine.tagging.model import Tagger

    tagger = Tagger.open(paths["tagger"], "")
    assert tagger.size == 448 and len(tagger.table) == 4 + len(world.all_tags())
