"""The LoRA trainer on a tiny SD1.5 model: files, progress, caches, resume and divergence."""
from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from engine.devtools.pictures import picture
from engine.devtools.tiny_models import TinyModelPaths
from engine.training import captions, data, faults, trainer
from engine.training.kohya_format import KOHYA_KEY
from engine.training.lora_files import trained_family
from engine.training.options import TrainOptions, preset
from engine.training.plan import make_plan
from engine.training.trainer import Progress, TrainingDiverged, TrainSpec, train

OPTIONS = dataclasses.replace(
    preset("sd15"), resolution=64, bucket_min=64, bucket_max=64, bucket_step=64, repeats=2, epochs=2,
    batch_size=2, network_dim=4, network_alpha=2.0, optimizer="adamw", mixed_precision="no",
)


@pytest.fixture(scope="module")
def tiny(tiny_models: TinyModelPaths) -> Path:
    return tiny_models.sd15


def _project(root: Path, n: int = 2, reg: int = 0) -> Path:
    for kind, count, offset in (("dataset", n, 0), ("reg", reg, 100)):
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (folder / f"{i}.png").write_bytes(picture(offset + i))
            (folder / f"{i}.txt").write_text(f"tok, tag{i}, red, blue")
    return root


def _spec(project: Path, model: Path, **changes) -> TrainSpec:
    options = dataclasses.replace(OPTIONS, **changes.pop("options", {}))
    return TrainSpec(project_dir=project, name="lora", base_model=str(model), options=options, trigger="tok",
                     device="cpu", **changes)


def test_tiny_run_writes_kohya_files_and_reports_progress(tmp_path: Path, tiny: Path) -> None:
    project = _project(tmp_path)
    events: list[Progress] = []
    result = train(_spec(project, tiny), events.append)

    plan = make_plan(OPTIONS, train_images=2)
    out = project / "output"
    for name in ("lora-01.safetensors", "lora-02.safetensors", "lora.safetensors"):
        assert (out / name).is_file()
    with safe_open(str(out / "lora.safetensors"), framework="pt") as f:
        keys = list(f.keys())
        assert keys and all(KOHYA_KEY.match(k) for k in keys)
        assert any(k.startswith("lora_te_text_model_encoder_layers_") for k in keys)
        alpha = [k for k in keys if k.endswith(".alpha")][0]
        assert float(f.get_tensor(alpha)) == 2.0
        assert "tok" in f.metadata()["ss_tag_frequency"]
        # kohya's module set; clip skip where sai_model_spec puts it, too.
        assert any("_mlp_fc1." in k for k in keys) and any("_proj_in." in k for k in keys)
        assert f.metadata()["modelspec.encoder_layer"] == str(OPTIONS.clip_skip)
    assert trained_family(out, "lora") == "sd15"
    assert not (out / "state" / "state.pt").exists()   # finished: the next training starts afresh
    assert [e.step for e in events] == list(range(1, plan.total_steps + 1))
    assert {e.total_steps for e in events} == {plan.total_steps}
    assert [e.epoch for e in events] == sorted(e.epoch for e in events)
    assert all(math.isfinite(e.loss) and e.it_s > 0 for e in events)
    assert result.total_steps == plan.total_steps and math.isfinite(result.final_loss)
    # 2 pictures, no flip: 2 VAE encodes before step 1, every use in a step a cache hit.
    assert (result.latent_cache_misses, result.latent_cache_hits) == (2, 2 * plan.total_steps)


def test_reg_balancing_counts() -> None:
    train_items = [data.Item(Path(f"t{i}.png"), "") for i in range(3)]
    few = [data.Item(Path(f"r{i}.png"), "") for i in range(2)]
    many = [data.Item(Path(f"r{i}.png"), "") for i in range(20)]
    samples = data.epoch_schedule(train_items, few, 4, seed=1, epoch=1)
    assert sum(not s.is_reg for s in samples) == 12 and sum(s.is_reg for s in samples) == 12
    assert sorted(str(s.item.path) for s in samples if s.is_reg) == ["r0.png"] * 6 + ["r1.png"] * 6
    used = {s.item.path.name for s in data.epoch_schedule(train_items, many, 4, seed=1, epoch=1) if s.is_reg}
    assert used == {f"r{i}.png" for i in range(12)}
    assert len(data.epoch_schedule(train_items, [], 4, seed=1, epoch=1)) == 12
    one = data.epoch_schedule(train_items, few, 4, seed=1, epoch=1)
    assert one == data.epoch_schedule(train_items, few, 4, seed=1, epoch=1)
    assert one != data.epoch_schedule(train_items, few, 4, seed=1, epoch=2)


def test_reg_pictures_are_trained_on_their_tags_or_on_the_class_alone(tmp_path: Path, tiny: Path) -> None:
    """The reg folder's tag counts in the file are those of the captions the loop trained on."""
    frequencies = {}
    for mode in ("class", "tags"):
        project = _project(tmp_path / mode, n=2, reg=2)
        train(_spec(project, tiny, class_name="man", options={"epochs": 1, "reg_captions": mode}), lambda _: None)
        with safe_open(str(project / "output" / "lora.safetensors"), framework="pt") as f:
            frequencies[mode] = json.loads(f.metadata()["ss_tag_frequency"])
    assert frequencies["class"] == {"2_lora": {"tok": 2, "tag0": 1, "tag1": 1, "red": 2, "blue": 2},
                                    "1_man": {"man": 2}}
    assert frequencies["tags"]["1_man"] == {"tok": 2, "tag0": 1, "tag1": 1, "red": 2, "blue": 2}


def test_example_captions_show_what_each_set_is_trained_on() -> None:
    assert captions.example_captions("1boy, red", "1boy, blue", "XingBar", "1boy", "class") == {
        "train": "XingBar, 1boy, red", "reg": "1boy"}
    assert captions.example_captions("red", "1boy, blue", "XingBar", "1boy", "tags")["reg"] == "1boy, blue"
    assert captions.example_captions("red", None, "XingBar", "1boy", "class") == {"train": "XingBar, red"}
    # No class to use: the reg picture keeps its own caption rather than being trained on nothing.
    assert captions.example_captions("red", "blue", "XingBar", " ", "class")["reg"] == "blue"


def test_caption_shuffle_keeps_first_tags() -> None:
    rng = random.Random(0)
    caption = "tok, a, b, c, d, e, f"
    shuffled = [data.shuffle_caption(caption, 1, rng) for _ in range(20)]
    assert all(s.startswith("tok, ") for s in shuffled)
    assert all(sorted(s.split(", ")) == sorted(caption.split(", ")) for s in shuffled)
    assert len(set(shuffled)) > 1
    assert captions.with_trigger("a, b", "tok") == "tok, a, b"
    assert captions.with_trigger("a, tok, b", "tok") == "tok, a, b"


def test_buckets_one_bucket_per_batch() -> None:
    buckets = data.make_buckets(512, 256, 1024, 64)
    assert (512, 512) in buckets and all(w * h <= 512 * 512 for w, h in buckets)
    assert data.pick_bucket((1000, 500), buckets)[0] > data.pick_bucket((1000, 500), buckets)[1]
    items = [data.Item(Path(f"{i}.png"), "") for i in range(6)]
    bucket = {item.path: buckets[i % 2] for i, item in enumerate(items)}
    samples = data.epoch_schedule(items, [], 3, seed=0, epoch=1)
    batches = data.make_batches(samples, lambda s: bucket[s.item.path], 4, random.Random(0))
    assert all(len({bucket[s.item.path] for s in b}) == 1 for b in batches)
    assert sum(len(b) for b in batches) == 18


def test_buckets_are_chosen_as_sd_scripts_chooses_them() -> None:
    # The difference of width/height ratios, not of their logarithms: 1.45 is nearer 1 than 2 here.
    assert data.pick_bucket((145, 100), [(128, 64), (128, 128)]) == (128, 128)
    assert data.pick_bucket((150, 100), [(64, 128), (128, 64), (128, 128)]) == (128, 64)   # a tie: the first
    assert data.pick_bucket((128, 64), [(128, 64), (192, 96)]) == (128, 64)   # a bucket's exact size


@pytest.mark.parametrize("size", [(192, 192), (203, 157)])
def test_training_pictures_shrink_by_area_average(tmp_path: Path, size: tuple[int, int]) -> None:
    """Shrunk to a 64 px bucket as sd-scripts shrinks them, OpenCV's INTER_AREA (each pixel the area-weighted
    mean of what it covers, at whole and at uneven scales); Lanczos would also weigh the neighbours."""
    import cv2

    noise = np.random.default_rng(3).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    pixels = ((data.load_pixels(tmp_path / "noise.png", (64, 64)) + 1) * 127.5).permute(1, 2, 0).numpy()
    scale = 64 / min(size)                          # to cover the bucket, then the centre cut out of it
    width, height = (int(side * scale + 0.5) for side in size)
    left, top = (width - 64) // 2, (height - 64) // 2
    reference = cv2.resize(noise, (width, height), interpolation=cv2.INTER_AREA)[top:top + 64, left:left + 64]
    assert np.abs(pixels - reference.astype(np.float64)).max() <= 1.01


def test_latents_are_seeded_samples_of_the_posterior(tmp_path: Path, tiny: Path) -> None:
    from diffusers import AutoencoderKL

    project = _project(tmp_path, n=1)
    vae = AutoencoderKL.from_pretrained(tiny / "vae").eval()
    [item], _ = data.load_items(project / "dataset", None)
    one, again, other = (data.LatentCache(vae, "cpu", seed).encode(item.path, (64, 64), False) for seed in (1, 1, 2))
    pixels = data.load_pixels(item.path, (64, 64)).unsqueeze(0)
    with torch.no_grad():
        mean = vae.encode(pixels).latent_dist.mean[0] * vae.config.scaling_factor
    assert torch.equal(one, again) and not torch.equal(one, other) and not torch.allclose(one, mean)


def test_latent_cache_is_keyed_by_sample(tmp_path: Path, tiny: Path) -> None:
    from diffusers import AutoencoderKL

    project = _project(tmp_path, n=2)
    vae = AutoencoderKL.from_pretrained(tiny / "vae").eval()
    items, _ = data.load_items(project / "dataset", None)
    cache = data.LatentCache(vae, "cpu")
    bucket = (64, 64)
    for epoch in (1, 2):   # different orders per epoch; the cache must follow the sample, not the step
        for sample in data.epoch_schedule(items, [], 3, seed=5, epoch=epoch):
            cache.latent(sample.item.path, bucket, False)
    assert (cache.misses, cache.hits) == (2, 10)
    fresh = {item.path: data.LatentCache(vae, "cpu").encode(item.path, bucket, False) for item in items}
    assert not torch.allclose(fresh[items[0].path], fresh[items[1].path])
    for item in items:
        assert torch.equal(cache.peek(data.latent_key(item.path, bucket, False)), fresh[item.path])


@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_the_vae_and_frozen_text_encoders_are_freed_before_step_1(tmp_path: Path, tiny: Path,
                                                                   train_text_encoder: bool) -> None:
    """Every latent (flips included) and every fixed caption is made before step 1; the VAE and frozen text
    encoders are then dropped to the meta device, where any later use would fail: the run finishing shows
    the steps need only the UNet, the LoRA and the optimizer."""
    project = _project(tmp_path, n=2, reg=5)   # 2 pictures × 2 repeats use 4 of the 5 reg pictures
    # Shuffled captions change every step, so only fixed ones are embedded ahead.
    options = {"flip_aug": True, "train_text_encoder": train_text_encoder, "shuffle_captions": False}
    result = train(_spec(project, tiny, class_name="man", options=options), lambda _: None)
    assert result.freed_before_step_1 == (("vae",) if train_text_encoder else ("vae", "text_encoder"))
    assert result.latent_cache_misses == (2 + 4) * 2
    steps = make_plan(dataclasses.replace(OPTIONS, **options), train_images=2, reg_images=5).total_steps
    assert result.latent_cache_hits == steps * OPTIONS.batch_size
    assert result.text_cache_hits == (0 if train_text_encoder else steps * OPTIONS.batch_size)


def test_resume_finishes_with_the_same_steps(tmp_path: Path, tiny: Path) -> None:
    project = _project(tmp_path)
    total = make_plan(OPTIONS, train_images=2).total_steps
    first: list[Progress] = []

    class Stop(Exception):
        pass

    def stop_in_epoch_2(progress: Progress) -> None:
        first.append(progress)
        if progress.epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        train(_spec(project, tiny), stop_in_epoch_2)
    out = project / "output"
    assert (out / "lora-01.safetensors").is_file() and not (out / "lora.safetensors").exists()
    assert (out / "state" / "state.pt").is_file()

    second: list[Progress] = []
    result = train(_spec(project, tiny, resume=True), second.append)
    assert result.resumed_from_epoch == 1
    # The status message says the run went on after epoch 1, at every step of the second run.
    assert {e.resumed_from_epoch for e in first} == {0} and {e.resumed_from_epoch for e in second} == {1}
    assert [e.step for e in second] == list(range(total // 2 + 1, total + 1))
    assert second[-1].total_steps == total and result.total_steps == total
    assert (out / "lora.safetensors").is_file() and (out / "lora-02.safetensors").is_file()


def test_a_training_begun_before_kohyas_module_set_resumes_as_it_began(tmp_path: Path, tiny: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A job queued by an older lorabake holds options without the network options; its saved state is
    an attention-only LoRA. After the upgrade it goes on from that state, with that network."""
    project = _project(tmp_path)
    added = ("conv_dim", "conv_alpha", "network_modules")
    saved = {k: v for k, v in dataclasses.replace(OPTIONS, network_modules="attention").to_dict().items()
             if k not in added}

    class Stop(Exception):
        pass

    def stop_in_epoch_2(progress: Progress) -> None:
        if progress.epoch == 2:
            raise Stop

    # The older version: an attention-only network, and options that know nothing of the new fields.
    real_to_dict = TrainOptions.to_dict
    monkeypatch.setattr(TrainOptions, "to_dict", lambda self: {k: v for k, v in real_to_dict(self).items()
                                                               if k not in added})
    with pytest.raises(Stop):
        train(_spec(project, tiny, options=dataclasses.asdict(TrainOptions.from_saved(saved))), stop_in_epoch_2)
    monkeypatch.undo()

    said: list[str] = []
    options = TrainOptions.from_saved(saved)
    spec = TrainSpec(project_dir=project, name="lora", base_model=str(tiny), options=options, trigger="tok",
                     device="cpu", resume=True, log=said.append)
    result = train(spec, lambda _: None)
    assert result.resumed_from_epoch == 1, said
    keys = load_file(project / "output" / "lora.safetensors").keys()
    assert any("_attn1_to_q." in k for k in keys) and any("_self_attn_q_proj." in k for k in keys)
    assert not any(part in k for k in keys for part in ("_proj_in.", "_ff_net_", "_mlp_fc"))


def test_nan_loss_stops_and_keeps_last_good_epoch(tmp_path: Path, tiny: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    project = _project(tmp_path)
    pipes = []
    real_load = trainer.load_pipeline

    def capture(*args, **kwargs):
        pipes.append(real_load(*args, **kwargs))
        return pipes[-1]

    monkeypatch.setattr(trainer, "load_pipeline", capture)
    steps_per_epoch = make_plan(OPTIONS, train_images=2).steps_per_epoch

    def corrupt(progress: Progress) -> None:
        if progress.step == steps_per_epoch + 1:   # in epoch 2, after epoch 1 was saved
            lora = next(p for n, p in pipes[0].unet.named_parameters() if ".lora_B" in n)
            with torch.no_grad():
                lora.fill_(float("nan"))

    # Steps from the second of epoch 2 on are skipped; epoch 2 ends on one, so only epoch 1 is saved.
    with pytest.raises(TrainingDiverged, match=f"NaN at step {steps_per_epoch + 2}, and 3 steps in a row were "
                                               "skipped: lower the learning rate .*lora-01.safetensors"):
        train(_spec(project, tiny, options={"epochs": 4}), corrupt)
    out = project / "output"
    assert (out / "lora-01.safetensors").is_file()
    assert not (out / "lora-02.safetensors").exists() and not (out / "lora.safetensors").exists()


def test_a_non_finite_step_is_skipped_and_the_run_goes_on(tmp_path: Path, tiny: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32 on a CPU has no loss scaler to catch it: the step with NaN gradients must change nothing."""
    project = _project(tmp_path)
    pipes, before = [], {}
    real_load = trainer.load_pipeline
    monkeypatch.setattr(trainer, "load_pipeline", lambda *a, **k: pipes.append(real_load(*a, **k)) or pipes[-1])

    def lora_weights() -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in pipes[0].unet.named_parameters() if ".lora_" in n}

    def watch(progress: Progress) -> None:
        if progress.step == 2:   # poison the gradients of step 3 only
            before.update(lora_weights())
            param = next(p for n, p in pipes[0].unet.named_parameters() if ".lora_B" in n)
            fired: list[bool] = []
            param.register_hook(lambda grad: grad if fired else fired.append(True) or grad * float("nan"))
        elif progress.step == 3:
            after = lora_weights()
            assert all(torch.equal(before[n], after[n]) for n in before), "the bad step was applied"
            assert all(torch.isfinite(w).all() for w in after.values())

    result = train(_spec(project, tiny), watch)
    assert before and result.total_steps == make_plan(OPTIONS, train_images=2).total_steps
    assert math.isfinite(result.final_loss)


def test_out_of_memory_keeps_the_epochs_and_a_smaller_batch_resumes_after_them(tmp_path: Path, tiny: Path) -> None:
    project = _project(tmp_path, n=4)
    options = {"epochs": 3}
    steps_per_epoch = make_plan(dataclasses.replace(OPTIONS, **options), train_images=4).steps_per_epoch

    def run_out_of_memory_in_epoch_3(progress: Progress) -> None:
        if progress.epoch == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    advice = "lower batch_size \\(now 2, e.g. 1\\), turn on gradient_checkpointing"
    with pytest.raises(trainer.TrainingOOM, match=advice):
        train(_spec(project, tiny, options=options), run_out_of_memory_in_epoch_3)
    out = project / "output"
    epoch_2 = (out / "lora-02.safetensors").read_bytes()

    said: list[str] = []
    events: list[Progress] = []
    smaller = {**options, "batch_size": 1}
    result = train(_spec(project, tiny, options=smaller, resume=True, log=said.append), events.append)
    assert result.resumed_from_epoch == 2 and (out / "lora-02.safetensors").read_bytes() == epoch_2
    per_epoch_now = make_plan(dataclasses.replace(OPTIONS, **smaller), train_images=4).steps_per_epoch
    assert per_epoch_now == 2 * steps_per_epoch
    assert [e.step for e in events] == list(range(2 * per_epoch_now + 1, 3 * per_epoch_now + 1))
    assert any("the batch size changed" in line for line in said)
    assert (out / "lora-03.safetensors").is_file() and (out / "lora.safetensors").is_file()


def test_a_state_from_another_optimizer_is_not_resumed(tmp_path: Path, tiny: Path) -> None:
    project = _project(tmp_path)

    class Stop(Exception):
        pass

    def stop_in_epoch_2(progress: Progress) -> None:
        if progress.epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        train(_spec(project, tiny), stop_in_epoch_2)
    state_path = project / "output" / "state" / "state.pt"
    state = torch.load(state_path, weights_only=True)
    torch.save({**state, "optimizer_class": "AdamW8bit"}, state_path)   # as a GPU with bitsandbytes saves it
    said: list[str] = []
    result = train(_spec(project, tiny, resume=True, log=said.append), lambda _: None)
    assert result.resumed_from_epoch == 0
    assert any("made with AdamW8bit, and this machine trains with AdamW" in line for line in said)


def test_prodigy_moves_the_lora_about_as_far_as_adamw(tmp_path: Path, tiny: Path) -> None:
    """Prodigy runs at lr 1 (it finds its own step size); at kohya's AdamW rate it would barely move. Its
    step size starts tiny and grows: measured on the tiny model, 0.004× AdamW's movement after 100 steps,
    4.8× after 200."""
    moved = {}
    for optimizer in ("adamw", "prodigy"):
        project = _project(tmp_path / optimizer)
        train(_spec(project, tiny, options={"optimizer": optimizer, "repeats": 100}), lambda _: None)
        with safe_open(str(project / "output" / "lora.safetensors"), framework="pt") as f:
            ups = [f.get_tensor(k) for k in f.keys() if k.endswith("lora_up.weight")]
            moved[optimizer] = float(torch.sqrt(sum((u.float() ** 2).sum() for u in ups)))
            if optimizer == "prodigy":
                assert f.metadata()["ss_unet_lr"] == "1.0" and "decouple=True" in f.metadata()["ss_optimizer"]
    assert moved["adamw"] > 0 and 0.2 < moved["prodigy"] / moved["adamw"] < 10, moved


def test_precision_fits_the_card() -> None:
    yes, no = (lambda: True), (lambda: False)
    assert faults.training_precision("bf16", "cuda", yes) == ("bf16", None)
    precision, why = faults.training_precision("bf16", "cuda:0", no)
    assert precision == "fp16" and "no native bf16" in why
    assert faults.training_precision("fp16", "cuda", no) == ("fp16", None)
    assert faults.training_precision("bf16", "cpu", yes) == ("no", None)   # autocast is for CUDA only


def test_out_of_memory_is_recognised_and_the_advice_fits_the_options() -> None:
    assert faults.is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert faults.is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not faults.is_out_of_memory(RuntimeError("shape mismatch"))
    checkpointing = faults.out_of_memory_message(
        dataclasses.replace(OPTIONS, gradient_checkpointing=True, batch_size=1))
    assert "gradient_checkpointing" not in checkpointing and "batch_size (now 1)" in checkpointing


def test_a_step_the_scaler_skips_does_not_advance_the_learning_rate() -> None:
    """fp16's GradScaler (here torch's CPU one: the same logic as CUDA's) skips a step whose gradients
    overflow and halves its scale; the schedule must wait for a step that was taken. A non-finite loss is
    never applied; without a scaler, non-finite gradients are not either."""
    from engine.training.optimizers import optimizer_step

    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)

    def step(loss: torch.Tensor, with_scaler: torch.amp.GradScaler = scaler) -> bool:
        applied = optimizer_step(loss, float(loss.detach()), scaler=with_scaler, optimizer=optimizer,
                                 lr_scheduler=schedule, trainable=[weight])
        optimizer.zero_grad(set_to_none=True)
        return applied

    # Finite loss, gradients that overflow once scaled (1e38 × 1024 > fp32's largest): skipped by the scaler.
    assert step((weight * 1e38).sum())
    assert scaler.get_scale() == 512.0 and schedule.last_epoch == 0 and torch.equal(weight.data, torch.ones(3))
    assert step((weight * 2.0).sum())            # a normal step: applied, the schedule moves
    assert schedule.last_epoch == 1 and not torch.equal(weight.data, torch.ones(3))
    before = weight.data.clone()
    assert not step(weight.sum() * float("nan"))  # a NaN loss: nothing applied
    no_scaler = torch.amp.GradScaler("cpu", enabled=False)
    assert not step((weight - weight.detach()).sqrt().sum(), no_scaler)   # loss 0, gradient inf
    assert schedule.last_epoch == 1 and torch.equal(weight.data, before)
