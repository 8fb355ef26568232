"""SDXL LoRA training on a tiny SDXL model: the UNet's conditioning (both text encoders, the pooled embedding,
sd-scripts' size/crop time ids), kohya files diffusers loads, resume, and choosing the family per training."""
from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors import safe_open
from safetensors.torch import load_file

from engine.config import Config, ModelsConfig
from engine.devtools.pictures import picture
from engine.devtools.tiny_models import TinyModelPaths
from engine.errors import Invalid, SetupError
from engine.facade import Engine
from engine.intake import IncomingFile
from engine.training import data, trainer
from engine.training.conditioning import SD15Conditioning, SDXLConditioning
from engine.training.kohya_format import KOHYA_KEY
from engine.training.lora_files import trained_family
from engine.training.options import TrainOptions, preset
from engine.training.trainer import Progress, TrainResult, TrainSpec, train
from storage import jobs as job_rows
from tests.conftest import ALICE_ACTOR

OPTIONS = dataclasses.replace(
    preset("sdxl"), resolution=64, bucket_min=64, bucket_max=64, bucket_step=64, repeats=1, epochs=2,
    batch_size=2, network_dim=4, network_alpha=2.0, optimizer="adamw", mixed_precision="no",
    gradient_checkpointing=False,
    # High rates so that two steps leave a LoRA whose effect is measurable.
    unet_lr=1e-2, text_encoder_lr=1e-2,
)
# (original width, height) of the two training pictures; both land in the 64×64 bucket.
SIZES = {"0.png": (96, 80), "1.png": (80, 120)}


@pytest.fixture(scope="module")
def tiny(tiny_models: TinyModelPaths) -> TinyModelPaths:
    return tiny_models


@dataclass
class Trained:
    project: Path
    result: TrainResult      # of the resumed run
    events: list[Progress]   # of both runs
    unet_calls: list[dict]   # what the UNet was called with, one entry per step of both runs
    interrupted_state: Path  # a copy of the state the first run left


@pytest.fixture(scope="module")
def trained(tiny: TinyModelPaths, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    project = tmp_path_factory.mktemp("project")
    (project / "dataset").mkdir()
    for i, (name, size) in enumerate(SIZES.items()):
        (project / "dataset" / name).write_bytes(picture(i, size=size))
        (project / "dataset" / name).with_suffix(".txt").write_text(f"tok, tag{i}, red")
    calls: list[dict] = []

    def record(_module, _args, kwargs):
        added = kwargs["added_cond_kwargs"]
        calls.append({"hidden": tuple(kwargs["encoder_hidden_states"].shape),
                      "text_embeds": tuple(added["text_embeds"].shape), "time_ids": added["time_ids"].tolist()})

    real_load = trainer.load_pipeline

    def load_and_watch(*args, **kwargs):
        pipe = real_load(*args, **kwargs)
        pipe.unet.register_forward_pre_hook(record, with_kwargs=True)
        return pipe

    events: list[Progress] = []

    class Stop(Exception):
        pass

    def stop_in_epoch_2(progress: Progress) -> None:
        events.append(progress)
        if progress.epoch == 2:
            raise Stop

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer, "load_pipeline", load_and_watch)
        with pytest.raises(Stop):
            train(_spec(project, tiny.sdxl), stop_in_epoch_2)
        kept = shutil.copy(project / "output" / "state" / "state.pt", project / "interrupted-state.pt")
        # The resumed run must reload both text encoders' LoRA weights, or it fails (missing keys).
        result = train(_spec(project, tiny.sdxl, resume=True), events.append)
    return Trained(project, result, events, calls, Path(kept))


def _spec(project: Path, model: Path, options: TrainOptions = OPTIONS, **changes) -> TrainSpec:
    return TrainSpec(project_dir=project, name="lora", base_model=str(model), options=options, trigger="tok",
                     device="cpu", **changes)


# --- size conditioning -------------------------------------------------------------------------------


@pytest.mark.parametrize(("original", "bucket", "flip", "expected"), [
    # (original_h, original_w, crop_top, crop_left, target_h, target_w), worked out with sd-scripts'
    # BucketManager.get_crop_ltrb and its flip rule (crop_left = target_w - crop_right).
    ((96, 80), (64, 64), False, (80, 96, 5, 0, 64, 64)),        # wider picture: fitted box 64 × 53.3
    ((80, 120), (64, 64), False, (120, 80, 0, 10, 64, 64)),     # taller picture: fitted box 42.7 × 64
    ((145, 100), (128, 64), False, (100, 145, 0, 17, 64, 128)),  # fitted box 92.8 wide: left 17, right 109.8
    ((145, 100), (128, 64), True, (100, 145, 0, 18, 64, 128)),   # mirrored: 128 - 109.8 = 18.2
    ((128, 64), (128, 64), True, (64, 128, 0, 0, 64, 128)),      # exact fit: nothing cropped
])
def test_time_ids_are_what_sd_scripts_computes(original, bucket, flip, expected) -> None:
    assert data.sdxl_time_ids(data.Placement(original, bucket, flip)) == expected


def test_text_conditioning_matches_the_pipelines_own_prompt_encoding(tiny: TinyModelPaths) -> None:
    captions = ["tok, red", "tag1, blue"]
    xl = StableDiffusionXLPipeline.from_pretrained(tiny.sdxl)
    ours = SDXLConditioning(xl, device="cpu", cache=False).encode(captions)
    hidden, _, pooled, _ = xl.encode_prompt(captions, device="cpu", do_classifier_free_guidance=False)
    assert ours.hidden.shape == (2, 77, 64) and ours.pooled.shape == (2, 32)
    assert torch.equal(ours.hidden, hidden) and torch.equal(ours.pooled, pooled)

    sd = StableDiffusionPipeline.from_pretrained(tiny.sd15, safety_checker=None, requires_safety_checker=False)
    ours = SD15Conditioning(sd, clip_skip=1, device="cpu", cache=False).encode(captions)
    theirs, _ = sd.encode_prompt(captions, "cpu", 1, False)
    assert torch.equal(ours.hidden, theirs) and ours.pooled is None
    # Clip skip 2 (A1111's count): the layer before the last, through the final layer norm. (diffusers'
    # own clip_skip path looks for `text_model`, which transformers 5 no longer has.)
    ids = sd.tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    out = sd.text_encoder(ids, output_hidden_states=True)
    skipped = SD15Conditioning(sd, clip_skip=2, device="cpu", cache=False).encode(captions).hidden
    assert torch.equal(skipped, sd.text_encoder.final_layer_norm(out.hidden_states[-2]))
    assert not torch.allclose(skipped, ours.hidden)


def test_cached_embeddings_equal_fresh_ones(tiny: TinyModelPaths) -> None:
    xl = StableDiffusionXLPipeline.from_pretrained(tiny.sdxl)
    cached = SDXLConditioning(xl, device="cpu", cache=True)
    fresh = SDXLConditioning(xl, device="cpu", cache=False).embed(["a", "b", "a"], grad=False)
    first, again = cached.embed(["a", "b", "a"], grad=False), cached.embed(["b", "a"], grad=False)
    assert cached.cache_hits == 3 and len(cached.cache) == 2
    assert torch.allclose(first.hidden, fresh.hidden, atol=1e-6)
    assert torch.allclose(first.pooled, fresh.pooled, atol=1e-6)
    assert torch.equal(again.pooled, first.pooled[[1, 0]])


# --- the tiny SDXL run -------------------------------------------------------------------------------


def test_the_unet_gets_both_encoders_the_pooled_embedding_and_time_ids(trained: Trained) -> None:
    assert [e.step for e in trained.events] == [1, 2, 2] and trained.result.total_steps == 2
    assert trained.result.resumed_from_epoch == 1
    assert not (trained.project / "output" / "state" / "state.pt").exists()   # finished: nothing to resume
    assert len(trained.unet_calls) == 3
    for call in trained.unet_calls:
        assert call["hidden"] == (2, 77, 64)       # 32 + 32: both encoders' penultimate layers
        assert call["text_embeds"] == (2, 32)      # text_encoder_2's projection
        assert sorted(map(tuple, call["time_ids"])) == [(80, 96, 5, 0, 64, 64), (120, 80, 0, 10, 64, 64)]


def test_sdxl_file_has_kohya_keys_real_alpha_and_sdxl_metadata(trained: Trained) -> None:
    out = trained.project / "output"
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["lora-01.safetensors", "lora-02.safetensors",
                                                                  "lora.safetensors"]
    state = load_file(out / "lora.safetensors")
    assert all(KOHYA_KEY.match(k) for k in state), [k for k in state if not KOHYA_KEY.match(k)][:3]
    assert {k.split("_")[1] for k in state} == {"unet", "te1", "te2"}
    for prefix in ("lora_te1_", "lora_te2_"):
        te_keys = [k for k in state if k.startswith(prefix)]
        # 5 layers × (4 attention projections + 2 MLP layers) × (down, up, alpha)
        assert len(te_keys) == 5 * 6 * 3 and all(k.startswith(prefix + "text_model_encoder_layers_") for k in te_keys)
    unet_keys = [k for k in state if k.startswith("lora_unet_")]
    # sd-scripts' SGM names: the first down level with attention is input_blocks 4 and 5, the mid block 1.
    assert all(k.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_1_", "lora_unet_output_blocks_"))
               for k in unet_keys), unet_keys[:3]
    assert "lora_unet_input_blocks_4_1_proj_in.lora_down.weight" in state
    alphas = [v for k, v in state.items() if k.endswith(".alpha")]
    assert len(alphas) * 3 == len(state) and {float(a) for a in alphas} == {2.0}
    with safe_open(str(out / "lora.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert (meta["ss_clip_skip"], meta["ss_resolution"], meta["ss_steps"]) == ("None", "(64, 64)", "2")
    assert trained_family(out, "lora") == "sdxl"
    (out / "lora.safetensors").rename(out / "final.bak")   # without the final file: the newest epoch's
    try:
        assert trained_family(out, "lora") == "sdxl" and trained_family(out, "other") is None
    finally:
        (out / "final.bak").rename(out / "lora.safetensors")


@torch.no_grad()
def _latents(pipe: StableDiffusionXLPipeline) -> torch.Tensor:
    return pipe(prompt="tok, red", num_inference_steps=2, height=64, width=64, output_type="latent",
                guidance_scale=1.0, generator=torch.Generator().manual_seed(7)).images


def test_diffusers_loads_it_and_the_weight_scales_the_effect(trained: Trained, tiny: TinyModelPaths) -> None:
    base = _latents(StableDiffusionXLPipeline.from_pretrained(tiny.sdxl))
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny.sdxl)
    pipe.load_lora_weights(str(trained.result.final_path), adapter_name="baked")
    # Every module of the file was taken up: both text encoders and the UNet carry the adapter.
    for module in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2):
        assert any("lora_A" in name for name, _ in module.named_parameters()), type(module).__name__
    change = {}
    for weight in (0.0, 0.5, 1.0):
        pipe.set_adapters(["baked"], [weight])
        change[weight] = (_latents(pipe) - base).norm().item()
    assert change[0.0] == 0.0   # weight 0 is the base model exactly
    assert 0 < change[0.5] < change[1.0]
    assert 1.6 < change[1.0] / change[0.5] < 2.4, change   # in proportion to the weight (2.0 measured)


def test_a_state_of_another_run_is_not_resumed(trained: Trained, tiny: TinyModelPaths, tmp_path: Path) -> None:
    """The train job always asks to resume: an earlier training's leftovers must not stop a new one."""
    project = tmp_path / "project"
    shutil.copytree(trained.project / "dataset", project / "dataset")
    (project / "output" / "state").mkdir(parents=True)
    shutil.copy(trained.interrupted_state, project / "output" / "state" / "state.pt")
    shutil.copy(trained.result.final_path, project / "output" / "lora-07.safetensors")   # an older, longer run
    said: list[str] = []
    sd15 = dataclasses.replace(OPTIONS, family="sd15")   # same steps and rank: only the base model differs
    result = train(_spec(project, tiny.sd15, resume=True, options=sd15, log=said.append,
                         prediction="v_prediction"), lambda _: None)
    assert result.resumed_from_epoch == 0 and result.total_steps == 2
    assert any("other settings, pictures or base model: starting at epoch 1" in line for line in said), said
    assert sorted(p.name for p in (project / "output").glob("*.safetensors")) == [
        "lora-01.safetensors", "lora-02.safetensors", "lora.safetensors"]
    assert trained_family(project / "output", "lora") == "sd15"
    with safe_open(str(result.final_path), framework="pt") as f:   # the forced prediction type was used
        assert f.metadata()["modelspec.prediction_type"] == "v_prediction"


# --- choosing the family per training -----------------------------------------------------------------


@pytest.fixture
async def engine(config: Config, tiny: TinyModelPaths):
    config = dataclasses.replace(
        config, intake=dataclasses.replace(config.intake, min_side=32),
        models=ModelsConfig(sd15=str(tiny.sd15), sdxl=str(tiny.sdxl), sdxl_prediction="v_prediction"))
    opened = await Engine.open(config)   # not started: queued jobs stay queued
    await opened.create_project(ALICE_ACTOR, "XingBar30", "XingBar", "man")
    await opened.add_images(ALICE_ACTOR, "XingBar30", [IncomingFile(f"p{n}.png", picture(n)) for n in range(2)])
    yield opened
    await opened.close()


async def test_plan_and_start_use_the_chosen_familys_model(engine: Engine, tiny: TinyModelPaths) -> None:
    default = await engine.training.plan(ALICE_ACTOR, "XingBar30", {})
    # Each family's preset, at the base model's own resolution (the tiny models are 64 px models).
    assert (default.family, default.options.resolution, default.options.network_dim) == ("sd15", 64, 16)
    xl = await engine.training.plan(ALICE_ACTOR, "XingBar30", {"epochs": "2"}, family="sdxl")
    assert (xl.family, xl.options.resolution, xl.options.network_dim, xl.options.epochs) == ("sdxl", 64, 8, 2)

    job = await engine.training.start(ALICE_ACTOR, "XingBar30", {}, family="SDXL")
    params = (await job_rows.get(engine._db, job.id)).params
    assert (params["base_model"], params["prediction"], params["options"]["family"]) == (
        str(tiny.sdxl), "v_prediction", "sdxl")
    await engine.cancel(ALICE_ACTOR, job.id)   # one training of a project at a time
    job = await engine.training.start(ALICE_ACTOR, "XingBar30", {})
    params = (await job_rows.get(engine._db, job.id)).params
    assert (params["base_model"], params["prediction"]) == (str(tiny.sd15), None)
    await engine.cancel(ALICE_ACTOR, job.id)

    # The Start button under a shown plan starts that plan's family.
    token = await engine.training.remember(ALICE_ACTOR, "XingBar30", {}, family="sdxl")
    job = await engine.training.start_remembered(ALICE_ACTOR, token)
    assert (await job_rows.get(engine._db, job.id)).params["base_model"] == str(tiny.sdxl)

    with pytest.raises(Invalid, match=r"unknown model family 'sd3': choose one of sd15, sdxl"):
        await engine.training.plan(ALICE_ACTOR, "XingBar30", {}, family="sd3")


async def test_a_family_whose_model_is_of_another_family_is_refused(engine: Engine, tiny: TinyModelPaths) -> None:
    engine.config = dataclasses.replace(engine.config, models=ModelsConfig(sdxl=str(tiny.sd15)))
    with pytest.raises(SetupError, match=r"\[models\] sdxl names .*SD 1\.x model, not SDXL"):
        await engine.training.plan(ALICE_ACTOR, "XingBar30", {}, family="sdxl")


async def test_samples_use_the_model_of_the_family_the_lora_was_trained_on(engine: Engine, trained: Trained,
                                                                           tiny: TinyModelPaths) -> None:
    output = engine.layout.project(ALICE_ACTOR.user_id, "XingBar30").output
    output.mkdir(parents=True, exist_ok=True)
    shutil.copy(trained.result.final_path, output / "XingBar30.safetensors")
    shutil.copy(trained.result.final_path, output / "XingBar30-01.safetensors")
    job = await engine.training.samples(ALICE_ACTOR, "XingBar30")
    assert (await job_rows.get(engine._db, job.id)).params["base_model"] == str(tiny.sdxl)
