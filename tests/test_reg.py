"""Regularization pictures: the job renders, tags and records them; an interrupted run renders only the
missing pictures, with the same pixels; bad requests are refused with a reason. Registration as "reg"
rows is tested end to end in test_reg_e2e. Tiny SD1.5 model, 64 px, 2 steps."""
from __future__ import annotations

import dataclasses
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from engine.config import Config, ConfigError, load_config
from engine.errors import Invalid, LimitReached, NotFound
from engine.facade import Engine
from engine.jobs import reg as reg_job
from engine.jobs.context import JobContext, JobSpec
from engine.reg.spec import MANIFEST_NAME, PENDING_DIR, Manifest, RegSpec
from tests.conftest import ALICE_ACTOR, BOB_ACTOR
from tests.helpers import tiny_config


@pytest.fixture
def config(config: Config, tiny_models) -> Config:
    return tiny_config(config, tiny_models)


def job_params(tiny_models, **changes: Any) -> dict[str, Any]:
    spec = RegSpec(base_model=str(tiny_models.sd15), prediction=None, prompt="masterpiece, man",
                   negative_prompt="lowres", count=4, steps=2, guidance=7.0, width=64, height=64, seed=10,
                   batch_size=2)
    return {**dataclasses.replace(spec, **changes).to_params(),
            "tagger": {"model": str(tiny_models.tagger), "general_threshold": 0.2}}


class Killed(BaseException):
    """Stands for the worker being killed: nothing after it runs."""


class KillAfter(io.StringIO):
    """The job's event stream, which kills the job once it reports `text`."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def write(self, data: str) -> int:
        written = super().write(data)
        if self.text in data:
            raise Killed
        return written


def run_job(project: Path, params: dict[str, Any], stream: io.StringIO | None = None) -> tuple[dict, list[dict]]:
    stream = stream or io.StringIO()
    spec = JobSpec(1, "reg", "engine.jobs.reg:run", params, str(project.parent), str(project), 1)
    try:
        return reg_job.run(JobContext(spec, stream)), _events(stream)
    finally:
        stream.seek(0)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def _events(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_names_seeds_and_keys_follow_the_settings(tiny_models) -> None:
    spec = RegSpec.from_params(job_params(tiny_models))
    assert spec.filenames() == [f"reg-{spec.key}-000{n}.png" for n in (1, 2, 3, 4)]
    assert [spec.seed_for(i) for i in range(4)] == [10, 11, 12, 13]
    assert dataclasses.replace(spec, count=100, batch_size=8).key == spec.key, "how many and how fast: same pictures"
    for change in ({"prompt": "woman"}, {"negative_prompt": ""}, {"steps": 3}, {"guidance": 5.0},
                   {"width": 72}, {"seed": 11}, {"prediction": "v_prediction"}, {"base_model": "other"}):
        assert dataclasses.replace(spec, **change).key != spec.key, change


def test_an_interrupted_run_renders_only_the_missing_pictures_with_the_same_pixels(tiny_models,
                                                                                   tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    result, _ = run_job(whole, job_params(tiny_models))
    names = list(result["files"])
    assert result["rendered"] == 4 and result["already_there"] == 0 and len(names) == 4
    reference = {name: (whole / PENDING_DIR / name).read_bytes() for name in names}
    manifest = Manifest.load(whole / "reg" / MANIFEST_NAME).files
    assert [manifest[name]["seed"] for name in names] == [10, 11, 12, 13]
    assert {manifest[name]["prompt"] for name in names} == {"masterpiece, man"}
    assert all(entry["caption"] == (whole / PENDING_DIR / name).with_suffix(".txt").read_text()
               for name, entry in result["files"].items())

    cut = tmp_path / "cut"
    with pytest.raises(Killed):
        run_job(cut, job_params(tiny_models), KillAfter("rendered 2 of 4"))
    assert sorted(p.name for p in (cut / PENDING_DIR).glob("*.png")) == names[:2]
    # A kill between a picture and its manifest entry: the file is there, unrecorded, and not trusted.
    (cut / PENDING_DIR / names[1]).write_bytes(b"half a picture")
    manifest = Manifest.load(cut / "reg" / MANIFEST_NAME)
    del manifest.files[names[1]]
    manifest.save()

    result, events = run_job(cut, job_params(tiny_models))
    assert result["rendered"] == 3 and result["already_there"] == 1
    rendered = [e["message"] for e in events if e["type"] == "progress" and e["message"].startswith("rendered")]
    assert rendered == [f"rendered {n} of 3 pictures" for n in (1, 2, 3)]
    assert (cut / PENDING_DIR / names[0]).read_bytes() == reference[names[0]], "not rendered again"
    for name in names[1:]:
        # Same seed, same picture; a picture rendered in another batch make-up may differ by one level
        # in a few channel values (float summation order), never more.
        again, first = pixels((cut / PENDING_DIR / name).read_bytes()), pixels(reference[name])
        assert np.abs(again - first).max() <= 1 and (again != first).mean() < 0.01, name
    assert set(result["files"]) == set(names), "every pending picture is tagged and handed over"

    # Another request: the other request's unregistered work is cleared, the new one rendered.
    result, _ = run_job(cut, job_params(tiny_models, prompt="masterpiece, woman", count=1))
    assert result["rendered"] == 1
    assert [p.name for p in (cut / PENDING_DIR).glob("*.png")] == list(result["files"])
    assert list(Manifest.load(cut / "reg" / MANIFEST_NAME).files) == list(result["files"])


async def test_bad_requests_are_refused_with_a_reason(engine: Engine, config: Config) -> None:
    await engine.create_project(ALICE_ACTOR, "XingBar30", "XingBar", "man")
    with pytest.raises(Invalid, match="from 1 to 1000"):
        await engine.reg.start(ALICE_ACTOR, "XingBar30", count=0)
    with pytest.raises(Invalid, match="from 1 to 1000"):
        await engine.reg.start(ALICE_ACTOR, "XingBar30", count=1001)
    with pytest.raises(Invalid, match="one line of plain text"):
        await engine.reg.start(ALICE_ACTOR, "XingBar30", prompt="man\nwoman")
    with pytest.raises(Invalid, match="shorten it"):
        await engine.reg.start(ALICE_ACTOR, "XingBar30", prompt="man " * 100)
    with pytest.raises(LimitReached, match="ask for at most 300 more"):
        await engine.reg.start(ALICE_ACTOR, "XingBar30", count=301)
    with pytest.raises(NotFound, match="no project called"):
        await engine.reg.start(BOB_ACTOR, "XingBar30")
    planned = await engine.reg.plan(ALICE_ACTOR, "XingBar30", prompt="  man, outdoors ")
    assert planned.spec.prompt == "masterpiece, best quality, man, outdoors"
    assert planned.spec.negative_prompt == config.reg.negative_prompt and planned.new_pictures == 3
    assert await engine.jobs(ALICE_ACTOR) == [], "nothing was queued"


@pytest.mark.parametrize("text, problem", [
    ("resolution = 70", "[reg] resolution must be 0 (the base model's training resolution) or 64 to 2048"),
    ("steps = 0", "[reg] steps must be between 1 and 150"),
    ("batch_size = 65", "[reg] batch_size must be between 1 and 64"),
    ("negative_prompt = 3", "[reg] negative_prompt must be a string"),
])
def test_the_reg_section_of_the_config_is_checked(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f"[reg]\n{text}\n")
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_config(path, env={})
