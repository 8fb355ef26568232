"""Quality scores on controlled inputs, and the recommendation rule."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.samples.scores import (
    CellScore,
    character_gain,
    fidelity,
    leak,
    pixel_distance,
    recommend,
    scored_tags,
)


def flat(value: int, size: int = 8) -> Image.Image:
    return Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8))


def test_fidelity_is_the_share_of_character_tags_found() -> None:
    traits = ["long hair", "brown eyes", "muscular", "beard"]
    assert fidelity(["long hair", "Brown Eyes", "shirt"], traits) == 0.5
    assert fidelity([], traits) == 0.0 and fidelity(traits, traits) == 1.0
    assert fidelity(["anything"], []) == 0.0


def test_scored_tags_leave_out_what_the_base_model_draws_anyway() -> None:
    pruned = ["purple hair", "yellow eyes"]
    frequent = ["1boy", "solo", "striped shirt", "purple hair"]
    base = [["1boy", "solo", "red hair"], ["1boy", "solo", "blue hair"], ["1girl", "solo", "Purple Hair"]]
    # 1boy (2 of 3) and solo (3 of 3) come at weight 0 anyway; a pruned trait counts even when it does.
    assert scored_tags(pruned, frequent, base) == ["purple hair", "yellow eyes", "striped shirt"]
    assert scored_tags(pruned, frequent, []) == ["purple hair", "yellow eyes", "1boy", "solo", "striped shirt"]
    assert scored_tags([], frequent, base, min_share=1.0) == ["1boy", "striped shirt", "purple hair"]


def test_pixel_distance_on_known_images() -> None:
    assert pixel_distance(flat(100), flat(100)) == 0.0
    assert pixel_distance(flat(0), flat(255)) == 1.0
    assert pixel_distance(flat(0), flat(51)) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="different sizes"):
        pixel_distance(flat(0, 8), flat(0, 16))


def test_character_gain_counts_only_the_character_tags_that_came_in() -> None:
    traits = ["purple hair", "yellow eyes", "slim", "striped shirt"]
    base = ["1boy", "red hair", "blue eyes", "slim"]
    # Tags that merely changed (red → black hair, a new background) are not the character coming in.
    assert character_gain(["1boy", "black hair", "blue eyes", "slim", "grey background"], base, traits) == 0.0
    # Purple hair came in; slim was there at weight 0 already and does not count again.
    assert character_gain(["1boy", "Purple Hair", "blue eyes", "slim"], base, traits) == 0.25
    assert character_gain(traits, [], traits) == 1.0 and character_gain(traits, [], []) == 0.0
    assert leak(0.1, 0.4) == 0.4 and leak(0.3, 0.0) == 0.3


def grid(*cells: tuple[int, float, float, float]) -> list[CellScore]:
    return [CellScore(epoch, weight, fid, lk) for epoch, weight, fid, lk in cells]


def test_recommendation_is_best_fidelity_under_the_leak_threshold() -> None:
    scores = grid((1, 0.0, 0.0, 0.0), (1, 0.6, 0.5, 0.05), (1, 1.0, 0.7, 0.30),
                  (2, 0.6, 0.8, 0.08), (2, 1.0, 0.9, 0.25))
    choice = recommend(scores, max_leak=0.1)
    assert (choice.epoch, choice.weight) == (2, 0.6)
    assert "Epoch 2 at weight 0.6" in choice.explanation and "80%" in choice.explanation


def test_ties_prefer_lower_weight_then_earlier_epoch() -> None:
    scores = grid((3, 0.8, 0.8, 0.0), (2, 0.8, 0.8, 0.0), (2, 0.4, 0.8, 0.0))
    assert (recommend(scores, max_leak=0.1).epoch, recommend(scores, max_leak=0.1).weight) == (2, 0.4)


def test_everything_leaks_gives_the_least_leaky_with_advice() -> None:
    scores = grid((1, 0.0, 0.0, 0.0), (1, 1.0, 0.9, 0.5), (2, 0.4, 0.3, 0.2))
    choice = recommend(scores, max_leak=0.1)
    assert (choice.epoch, choice.weight) == (2, 0.4) and "more regularization pictures" in choice.explanation
    with pytest.raises(ValueError, match="only weight-0"):
        recommend(grid((1, 0.0, 0.0, 0.0)), max_leak=0.1)


def _report() -> dict:
    scores = [CellScore(e, w, 0.1 * e, 0.0) for e in (1, 2) for w in (0.0, 1.0)]
    return {"scores": [s.__dict__ for s in scores], "recommended": {"epoch": 2, "weight": 1.0},
            "explanation": "Epoch 2 …", "max_leak": 0.15, "sampled_files": {"1": "aa", "2": "bb"},
            "grids": ["grid-01.png"], "epoch_grids": {"1": ["epoch-01.png"], "2": ["epoch-02.png"]},
            "heatmap": "heatmap.png", "models": [{"model": "other", "grids": ["model-01.png"]}],
            "skipped_models": [{"model": "xl", "reason": "it is an SDXL model"}]}


def test_sample_results_list_the_pictures_and_filter_one_epoch(tmp_path) -> None:
    from engine.errors import Invalid
    from engine.samples.report import sample_results

    for name in ("grid-01.png", "epoch-01.png", "epoch-02.png", "heatmap.png", "model-01.png"):
        (tmp_path / name).write_bytes(b"png")
    every = sample_results("alice", tmp_path, _report(), epoch=None, epoch_hashes={1: "aa", 2: "bb"})
    assert [p.name for p in every.files] == ["heatmap.png", "grid-01.png", "model-01.png"]
    assert len(every.scores) == 4 and every.current and every.models == ["other"]
    assert every.skipped_models == [("xl", "it is an SDXL model")]
    one = sample_results("alice", tmp_path, _report(), epoch=1, epoch_hashes={1: "aa", 2: "bb"})
    assert [p.name for p in one.files] == ["epoch-01.png"] and {s.epoch for s in one.scores} == {1}
    with pytest.raises(Invalid, match="no epoch 3: the sampled epochs are 1, 2"):
        sample_results("alice", tmp_path, _report(), epoch=3, epoch_hashes={})


def test_samples_are_current_only_while_every_sampled_file_is_unchanged() -> None:
    from engine.samples.report import samples_match

    assert samples_match(_report(), {1: "aa", 2: "bb", 3: "cc"})
    assert not samples_match(_report(), {1: "aa", 2: "retrained"})
    assert not samples_match(_report(), {1: "aa"}), "a sampled epoch file is gone"
    assert not samples_match({**_report(), "sampled_files": {}}, {1: "aa"})
