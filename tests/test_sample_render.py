"""Sample rendering (DESIGN §1 step 7, §3 weight sweep): one base pipeline, LoRA files swapped in memory,
weight 0 = the base model bit for bit, and one grid per prompt."""
from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline
from PIL import Image

from engine.devtools.tiny_models import TinyModelPaths
from engine.models.base import resolve_base_model
from engine.samples.grid import draw_grid
from engine.samples.render import Sample, SampleRenderer, SampleSpec, default_prompts, file_grid, grids
from engine.training.kohya_format import kohya_metadata, save_kohya_lora, to_kohya_state_dict
from engine.training.lora_files import lora_clip_skip
from engine.training.lora_inject import add_text_encoder_lora, add_unet_lora, lora_state_dict
from engine.training.lora_modules import Network

RANK, ALPHA = 4, 4.0
NETWORK = Network(RANK, ALPHA)
PROMPT, SEED = "xingbar man, portrait", 7
SPEC = SampleSpec(prompts=[PROMPT], control_prompts=[], negative_prompt="blurry", weights=[0, 0.5, 1],
                  seeds=[SEED], steps=2, guidance=5.0, size=(64, 64))


def _make_lora(folder: Path, out: Path, *, seed: int, text_encoder: bool) -> Path:
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    params = add_unet_lora(pipe.unet, NETWORK)
    if text_encoder:
        params += add_text_encoder_lora(pipe.text_encoder, NETWORK)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    state = to_kohya_state_dict(lora_state_dict(pipe.unet),
                                [lora_state_dict(pipe.text_encoder)] if text_encoder else [],
                                family="sd15", network=NETWORK)
    meta = kohya_metadata(base_model=str(folder), family="sd15", network=NETWORK, unet_lr=5e-4,
                          text_encoder_lr=1e-4 if text_encoder else None, epochs=2, epoch=1, steps=10,
                          resolution=64, tag_frequency={})
    return save_kohya_lora(out, state, meta)


def _plain_base_image(folder: Path) -> np.ndarray:
    """What the base model draws with no LoRA machinery at all, same settings."""
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(prompt=PROMPT, negative_prompt="blurry", num_inference_steps=2, guidance_scale=5.0, width=64,
                 height=64, generator=torch.Generator("cpu").manual_seed(SEED)).images[0]
    return np.asarray(image)


@dataclass
class Rendered:
    renderer: SampleRenderer
    first: list[Sample]       # A and B together
    again: list[Sample]       # A alone, after B
    pipeline_ids: list[int]
    loads: list[str]
    base: np.ndarray
    files: dict[str, Path]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory, tiny_models: TinyModelPaths) -> Rendered:
    root, tiny = tmp_path_factory.mktemp("render"), tiny_models
    a = _make_lora(tiny.sd15, root / "alice-01.safetensors", seed=1, text_encoder=False)
    b = _make_lora(tiny.sd15, root / "alice-02.safetensors", seed=2, text_encoder=True)
    base = _plain_base_image(tiny.sd15)

    loads: list[str] = []
    original = DiffusionPipeline.from_pretrained.__func__  # type: ignore[attr-defined]

    def counting(cls, *args, **kwargs):  # noqa: ANN001, ANN202
        loads.append(cls.__name__)
        return original(cls, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DiffusionPipeline, "from_pretrained", classmethod(counting))
        renderer = SampleRenderer(resolve_base_model(str(tiny.sd15)))
        ids = [id(renderer.pipeline)]
        first = renderer.render({"epoch 1": a, "epoch 2": b}, SPEC)
        ids.append(id(renderer.pipeline))
        again = renderer.render({"epoch 1": a}, SPEC)
        ids.append(id(renderer.pipeline))
    return Rendered(renderer, first, again, ids, loads, base, {"epoch 1": a, "epoch 2": b})


def _img(samples: list[Sample], label: str, weight: float) -> np.ndarray:
    [match] = [s for s in samples if s.label == label and s.weight == weight]
    return np.asarray(match.image)


def _dist(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.abs(x.astype(np.float32) - y.astype(np.float32)).mean())


def test_every_cell_is_rendered(rendered: Rendered) -> None:
    cells = {(s.label, s.weight, s.prompt, s.seed, s.is_control) for s in rendered.first}
    assert len(rendered.first) == len(cells) == 6
    assert {(s.label, s.weight) for s in rendered.first} == {(lab, w) for lab in ("epoch 1", "epoch 2")
                                                            for w in (0.0, 0.5, 1.0)}
    assert all(s.image.size == (64, 64) and not s.is_control for s in rendered.first)


def test_weight_zero_is_the_base_model_bit_for_bit(rendered: Rendered) -> None:
    for label in ("epoch 1", "epoch 2"):
        assert np.array_equal(_img(rendered.first, label, 0.0), rendered.base), label
    assert np.array_equal(_img(rendered.again, "epoch 1", 0.0), rendered.base)


def test_weight_scales_the_lora_effect(rendered: Rendered) -> None:
    for label in ("epoch 1", "epoch 2"):
        half = _dist(_img(rendered.first, label, 0.5), rendered.base)
        full = _dist(_img(rendered.first, label, 1.0), rendered.base)
        assert full > half > 0, (label, half, full)


def test_files_differ_and_swapping_leaves_no_residue(rendered: Rendered) -> None:
    a1, b1 = _img(rendered.first, "epoch 1", 1.0), _img(rendered.first, "epoch 2", 1.0)
    assert not np.array_equal(a1, b1)
    assert np.array_equal(_img(rendered.again, "epoch 1", 1.0), a1)
    assert np.array_equal(_img(rendered.again, "epoch 1", 0.5), _img(rendered.first, "epoch 1", 0.5))


def test_the_pipeline_is_loaded_once(rendered: Rendered) -> None:
    assert len(set(rendered.pipeline_ids)) == 1
    assert rendered.loads == ["StableDiffusionPipeline"]
    pipe = rendered.renderer.pipeline
    assert getattr(pipe, "safety_checker", None) is None
    assert not pipe.unet.is_gradient_checkpointing
    assert pipe.get_list_adapters() == {} or all(not v for v in pipe.get_list_adapters().values())


def test_text_encoder_lora_follows_the_weight(rendered: Rendered) -> None:
    """File B carries text-encoder LoRA: set_adapters must scale it too (0 ⇒ base text embeddings)."""
    pipe = rendered.renderer.pipeline
    b = rendered.files["epoch 2"]
    ids = pipe.tokenizer(PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        base = pipe.text_encoder(ids)[0]
        pipe.load_lora_weights(str(b), adapter_name="probe")
        try:
            out = {}
            for w in (0.0, 0.5, 1.0):
                pipe.set_adapters(["probe"], adapter_weights=[w])
                out[w] = pipe.text_encoder(ids)[0]
        finally:
            pipe.unload_lora_weights()
        assert torch.equal(out[0.0], base)
        assert (out[1.0] - base).norm() > (out[0.5] - base).norm() > 0
        assert torch.equal(pipe.text_encoder(ids)[0], base)


def test_clip_skip_reads_prompts_from_an_earlier_text_encoder_layer(rendered: Rendered) -> None:
    """Checked against embeddings made here from the text encoder's hidden states (A1111's clip skip):
    the layer 2 from the end, through the final layer norm, for the prompt and the negative prompt."""
    pipe = rendered.renderer.pipeline
    [skipped] = rendered.renderer.render({"epoch 1": rendered.files["epoch 1"]},
                                         dataclasses.replace(SPEC, weights=[0.0], clip_skip=2))
    encoder = pipe.text_encoder
    norm = getattr(encoder, "final_layer_norm", None) or encoder.text_model.final_layer_norm

    def embed(text: str) -> torch.Tensor:
        ids = pipe.tokenizer(text, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            return norm(encoder(ids, output_hidden_states=True).hidden_states[-2])

    expected = pipe(prompt_embeds=embed(PROMPT), negative_prompt_embeds=embed("blurry"), num_inference_steps=2,
                    guidance_scale=5.0, width=64, height=64,
                    generator=torch.Generator("cpu").manual_seed(SEED)).images[0]
    assert np.array_equal(np.asarray(skipped.image), np.asarray(expected))
    assert _dist(np.asarray(skipped.image), rendered.base) > 0, "clip skip 2 is not clip skip 1"


def test_the_clip_skip_of_a_lora_file_comes_from_its_metadata(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    tensor = {"lora_unet_x.alpha": np.ones((), dtype=np.float32)}
    for written, read in (({"ss_clip_skip": "2"}, 2), ({"ss_clip_skip": "None"}, 1), ({}, 1),
                          ({"ss_clip_skip": "40"}, 1)):
        save_file(tensor, tmp_path / "lora.safetensors", metadata=written)
        assert lora_clip_skip(tmp_path / "lora.safetensors") == read, written
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    assert lora_clip_skip(tmp_path / "broken.safetensors") == 1


def test_one_grid_per_prompt_with_the_right_shape(rendered: Rendered) -> None:
    samples = list(rendered.first)
    # A second prompt (a control), faked from the first one's images, to show one grid per prompt.
    samples += [Sample(s.label, s.weight, "a castle", s.seed, True, s.image) for s in rendered.first]
    out = grids(samples, title="alice", max_bytes=8 * 1024 * 1024, cell=64)
    assert len(out) == 2
    blank = Image.new("RGB", (64, 64))
    expected = draw_grid([[blank] * 3] * 2, row_labels=["a", "b"], col_labels=["0", "0.5", "1"], title="t",
                         cell=64).size
    for grid in out:
        assert grid.size == expected and grid.rows == range(2)
        assert Image.open(io.BytesIO(grid.data)).size == expected
    # Two seeds: a row per epoch and seed.
    two_seeds = samples + [Sample(s.label, s.weight, s.prompt, 99, s.is_control, s.image) for s in samples]
    out = grids(two_seeds, title="alice", max_bytes=8 * 1024 * 1024, cell=64)
    assert [g.rows for g in out] == [range(4), range(4)]
    with pytest.raises(ValueError, match="missing sample"):
        grids(samples[:-1], title="alice", max_bytes=8 * 1024 * 1024, cell=64)


def test_one_files_grid_has_a_row_per_prompt_and_a_column_per_weight(rendered: Rendered) -> None:
    """The per-epoch grid (and the one per extra base model): rows = prompts (× seeds), columns = weights."""
    samples = list(rendered.first)
    samples += [Sample(s.label, s.weight, "a castle", s.seed, True, s.image) for s in rendered.first]
    [grid] = file_grid(samples, "epoch 2", title="alice: epoch 2", max_bytes=8 * 1024 * 1024, cell=64)
    blank = Image.new("RGB", (64, 64))
    expected = draw_grid([[blank] * 3] * 2, row_labels=["a", "b"], col_labels=["0", "0.5", "1"], title="t",
                         cell=64).size
    assert grid.size == expected and grid.rows == range(2)
    # The epoch-2 cells are in it, not epoch 1's: the top-right cell is epoch 2 at weight 1.
    picture = np.asarray(Image.open(io.BytesIO(grid.data)).convert("RGB")).astype(np.float32)
    width, height = expected
    top = height - 2 * 64
    cell = picture[top:top + 64, width - 64:width]
    assert _dist(cell, _img(rendered.first, "epoch 2", 1.0)) < 3
    assert _dist(cell, _img(rendered.first, "epoch 1", 1.0)) > _dist(cell, _img(rendered.first, "epoch 2", 1.0))
    with pytest.raises(ValueError, match="no samples for 'epoch 9'"):
        file_grid(samples, "epoch 9", title="t", max_bytes=8 * 1024 * 1024)
    with pytest.raises(ValueError, match="missing sample"):
        file_grid(samples[1:], "epoch 1", title="t", max_bytes=8 * 1024 * 1024)


def test_default_prompts_and_spec_checks() -> None:
    trigger, control = default_prompts("XingBar", "man")
    assert trigger == ["XingBar, portrait", "XingBar man standing in a park", "XingBar, upper body, smiling"]
    assert all("XingBar" not in p for p in control) and "a man standing in a park" in control
    with pytest.raises(ValueError, match="trigger"):
        default_prompts(" ", "man")
    assert SampleSpec(prompts=["x"]).weights == [0.0, 0.4, 0.6, 0.8, 1.0]
    for bad in (SampleSpec(prompts=[]), SampleSpec(prompts=["x"], weights=[]), SampleSpec(prompts=["x"], seeds=[]),
                SampleSpec(prompts=["x"], weights=[0, 3]), SampleSpec(prompts=["x"], size=(60, 64))):
        with pytest.raises(ValueError):
            bad.check()


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_batching_never_changes_a_picture(rendered: Rendered, clip_skip: int) -> None:
    """A weight's prompts × seeds drawn 4 at a time (6 cells per weight: one full batch of 4, one partial of
    2) are the pictures drawn one at a time, cell for cell — with clip skip's own embeddings too."""
    spec = dataclasses.replace(SPEC, prompts=[PROMPT, "xingbar man, full body"], control_prompts=["a man"],
                               seeds=[SEED, SEED + 1], weights=[0, 1], clip_skip=clip_skip)
    files = {"epoch 2": rendered.files["epoch 2"]}
    alone = rendered.renderer.render(files, dataclasses.replace(spec, batch_size=1))
    batched = rendered.renderer.render(files, dataclasses.replace(spec, batch_size=4))
    assert [(s.prompt, s.seed, s.weight) for s in alone] == [(s.prompt, s.seed, s.weight) for s in batched]
    assert len(alone) == 12
    for one, many in zip(alone, batched, strict=True):
        difference = np.abs(np.asarray(one.image, np.int16) - np.asarray(many.image, np.int16)).max()
        assert difference <= 1, (one.prompt, one.seed, one.weight, difference)
    # The cells are not all one picture (the comparison above could not pass by drawing nothing).
    assert len({np.asarray(s.image).tobytes() for s in batched}) == len(batched)
