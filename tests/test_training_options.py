"""Training presets match kohya-colab's numbers (DESIGN §3); overrides are parsed and range-checked with
messages a member can act on; the step plan's arithmetic follows sd-scripts (reg pictures double an epoch)."""
from __future__ import annotations

import dataclasses

import pytest

from engine.errors import Invalid
from engine.training.options import RULES, TrainOptions, apply_overrides, describe_rules, group_learning_rates, preset
from engine.training.plan import make_plan, refuse_if_too_long

SD15 = dict(
    family="sd15", resolution=512, repeats=10, epochs=10, batch_size=2, unet_lr=5e-4, text_encoder_lr=1e-4,
    train_text_encoder=True, lr_scheduler="cosine_with_restarts", lr_restarts=3, warmup_ratio=0.05,
    min_snr_gamma=5, noise_offset=0.0, multires_noise_iterations=0, multires_noise_discount=0.3, network_dim=16,
    network_alpha=8, conv_dim=0, conv_alpha=1.0, network_modules="kohya", optimizer="adamw8bit",
    clip_skip=2, keep_tokens=1, shuffle_captions=True, flip_aug=False,
    bucket_min=256, bucket_max=1024, bucket_step=64, prior_loss_weight=1.0, reg_captions="tags", save_every_n_epochs=1,
    keep_last_n=10,
    seed=42, mixed_precision="fp16", gradient_checkpointing=False, max_train_steps_cap=10_000,
)
SDXL = {
    **SD15, "family": "sdxl", "resolution": 1024, "repeats": 2, "batch_size": 4, "unet_lr": 3e-4,
    "text_encoder_lr": 6e-5, "min_snr_gamma": 8, "multires_noise_iterations": 6, "multires_noise_discount": 0.3,
    "network_dim": 8, "network_alpha": 4, "clip_skip": 1, "bucket_max": 2048, "mixed_precision": "bf16",
    "gradient_checkpointing": True,
}


@pytest.mark.parametrize(("family", "expected"), [("sd15", SD15), ("sdxl", SDXL)])
def test_presets_are_the_kohya_colab_numbers(family: str, expected: dict) -> None:
    assert preset(family).to_dict() == expected


def test_unknown_family_and_frozen() -> None:
    with pytest.raises(Invalid, match="sd3"):
        preset("sd3")
    with pytest.raises(dataclasses.FrozenInstanceError):
        preset("sd15").epochs = 3  # type: ignore[misc]


def test_every_settable_option_has_a_rule_and_every_rule_a_field() -> None:
    fields = {f.name for f in dataclasses.fields(TrainOptions)}
    assert set(RULES) == fields - {"family", "max_train_steps_cap"}
    assert set(describe_rules()) == set(RULES) | {"network"}   # + the LoRA-type choice that sets several
    for family in ("sd15", "sdxl"):  # the presets themselves pass the rules
        options = preset(family)
        assert apply_overrides(options, {name: getattr(options, name) for name in RULES}) == options


def test_overrides_parse_strings_from_members() -> None:
    options = apply_overrides(preset("sd15"), {
        "unet_lr": "5e-5", "epochs": "12", "flip_aug": "true", "shuffle_captions": "No", "lr_scheduler": "Cosine",
        "optimizer": "AdamW", "network_alpha": "1", "Network-Dim": " 32 ", "seed": "1_000", "warmup_ratio": 0,
    })
    assert (options.unet_lr, options.epochs, options.flip_aug, options.shuffle_captions) == (5e-5, 12, True, False)
    assert (options.lr_scheduler, options.optimizer, options.network_dim, options.seed) == ("cosine", "adamw", 32, 1000)
    assert options.network_alpha == 1.0 and isinstance(options.epochs, int) and options.warmup_ratio == 0
    # Short names members type map to the options.
    aliased = apply_overrides(preset("sdxl"), {"dim": 4, "alpha": "2", "lr": 1e-4, "batch": "1"})
    assert (aliased.network_dim, aliased.network_alpha, aliased.unet_lr, aliased.batch_size) == (4, 2.0, 1e-4, 1)
    assert aliased.family == "sdxl" and aliased.resolution == 1024
    # The original is untouched.
    assert preset("sd15").unet_lr == 5e-4


@pytest.mark.parametrize(("overrides", "message"), [
    ({"unet_lr": "5"}, "unet_lr must be between 1e-6 and 0.01, got 5"),
    ({"unet_lr": "fast"}, "unet_lr must be a number between 1e-6 and 0.01, got 'fast'"),
    ({"unet_lr": "nan"}, "unet_lr must be a number between 1e-6 and 0.01"),
    ({"epochs": "0"}, "epochs must be between 1 and 100, got 0"),
    ({"epochs": "2.5"}, "epochs must be a whole number between 1 and 100"),
    ({"batch_size": True}, "batch_size must be a number between 1 and 32"),
    ({"resolution": 500}, "resolution must be a multiple of 64 (between 64 and 2,048 in steps of 64), got 500"),
    ({"flip_aug": "maybe"}, "flip_aug must be true or false, got 'maybe'"),
    ({"optimizer": "sgd"}, "optimizer must be one of adamw8bit, adamw, prodigy, got 'sgd'"),
    ({"lr_scheduler": "polynomial"}, "lr_scheduler must be one of cosine_with_restarts, constant, linear, cosine"),
    ({"mixed_precision": "fp8"}, "mixed_precision must be one of fp16, bf16, no"),
    ({"seed": -1}, "seed must be between 0 and 4,294,967,295, got -1"),
    ({"bucket_max": 448}, "resolution (512) must be between bucket_min (256) and bucket_max (448)"),
    ({"bucket_min": 1024, "bucket_max": 768}, "bucket_min (1024) must not be above bucket_max (768)"),
    ({"family": "sdxl"}, "family comes from the base model"),
    ({"max_train_steps_cap": 99999}, "max_train_steps_cap is the server's limit"),
])
def test_bad_overrides_name_the_option_and_its_range(overrides: dict, message: str) -> None:
    with pytest.raises(Invalid) as caught:
        apply_overrides(preset("sd15"), overrides)
    assert message in str(caught.value)


def test_unknown_option_suggests_the_close_one() -> None:
    with pytest.raises(Invalid, match=r"unknown option 'unet_lrr': did you mean unet_lr\?"):
        apply_overrides(preset("sd15"), {"unet_lrr": "1e-4"})
    with pytest.raises(Invalid, match=r"did you mean network_dim\?"):
        apply_overrides(preset("sd15"), {"network_dims": 8})
    with pytest.raises(Invalid, match=r"unknown option 'banana' \(options: batch_size, .*warmup_ratio\)"):
        apply_overrides(preset("sd15"), {"banana": 1})


# --- the plan ------------------------------------------------------------------------------------------


def test_plan_without_reg_images() -> None:
    # 25 pictures × 10 repeats = 250 per epoch; batch 2 → ceil(125) = 125 steps; × 10 epochs = 1,250.
    plan = make_plan(preset("sd15"), train_images=25, reg_images=0, seconds_per_step=None)
    assert (plan.images_per_epoch, plan.reg_per_epoch, plan.steps_per_epoch, plan.total_steps) == (250, 0, 125, 1250)
    assert plan.reg_doubling is False and plan.estimated_seconds is None
    assert plan.warmup_steps == 63  # ceil(1250 × 0.05)
    text = " ".join(plan.explanation)
    assert "regularization" not in text and "twice" not in text and "Rule of thumb" not in text
    assert "1,250 steps" in text


def test_plan_with_reg_images_doubles_each_epoch() -> None:
    # 21 × 10 = 210 per epoch, plus 210 reg (100 cycled round) = 420; batch 4 → ceil(105) = 105; × 3 = 315.
    options = apply_overrides(preset("sd15"), {"batch_size": 4, "epochs": 3})
    plan = make_plan(options, train_images=21, reg_images=100, seconds_per_step=2.0)
    assert (plan.images_per_epoch, plan.reg_per_epoch, plan.steps_per_epoch, plan.total_steps) == (210, 210, 105, 315)
    assert plan.reg_doubling is True and plan.estimated_seconds == 630.0
    text = " ".join(plan.explanation)
    assert "With 100 regularization pictures each epoch also shows 210 class pictures" in text
    assert "twice as long" in text and "cycled round to 210" in text
    assert "about 10 min" in text
    # Odd totals round up: 3 pictures × 1 repeat + 3 reg = 6 → batch 4 → 2 steps per epoch.
    odd = make_plan(apply_overrides(options, {"repeats": 1}), train_images=3, reg_images=500, seconds_per_step=None)
    assert (odd.steps_per_epoch, odd.total_steps) == (2, 6)
    assert "only the first 3 of them are used" in " ".join(odd.explanation)


def test_plan_sdxl_preset() -> None:
    # 40 × 2 = 80 per epoch; batch 4 → 20 steps; × 10 = 200. 80 is below 200–400: the rule-of-thumb note.
    plan = make_plan(preset("sdxl"), train_images=40, reg_images=0, seconds_per_step=None)
    assert (plan.steps_per_epoch, plan.total_steps) == (20, 200)
    assert any("Rule of thumb" in line and "repeats 8 would give 320" in line for line in plan.explanation)


def test_plan_refuses_nonsense_counts() -> None:
    with pytest.raises(Invalid, match="no training pictures"):
        make_plan(preset("sd15"), train_images=0, reg_images=0, seconds_per_step=None)
    with pytest.raises(Invalid, match="seconds per step"):
        make_plan(preset("sd15"), train_images=5, reg_images=0, seconds_per_step=0)


def test_refuse_if_too_long() -> None:
    # 124 × 10 × 2 (reg) / 2 = 1,240 steps per epoch × 10 = 12,400 > 10,000.
    plan = make_plan(preset("sd15"), train_images=124, reg_images=50, seconds_per_step=None)
    assert plan.total_steps == 12_400
    with pytest.raises(Invalid) as caught:
        refuse_if_too_long(plan, 10_000)
    message = str(caught.value)
    assert message.startswith("this would be 12,400 steps; the server allows 10,000: lower repeats or epochs")
    assert "epochs 8 gives 9,920 steps" in message
    refuse_if_too_long(plan, 12_400)  # exactly at the cap is allowed


def test_prodigy_plan_says_the_learning_rates_it_runs_at() -> None:
    prodigy = apply_overrides(preset("sd15"), {"optimizer": "prodigy"})
    assert group_learning_rates(prodigy) == (1.0, 1.0)
    assert group_learning_rates(preset("sd15")) == (5e-4, 1e-4)
    said = make_plan(prodigy, train_images=20).explanation[-1]
    assert said.startswith("Prodigy finds its own step size") and "1 for the UNet and the text encoder" in said
    frozen = make_plan(apply_overrides(prodigy, {"train_text_encoder": "false"}), train_images=20).explanation
    assert "1 for the UNet (" in " ".join(frozen)


def test_the_plan_tells_the_gpu_memory_and_what_lowers_it() -> None:
    from engine.training import memory

    sd15 = preset("sd15")
    found = memory.estimate(sd15)
    plan = make_plan(sd15, train_images=20)
    assert plan.gpu_memory_gb == round(found.total_gib, 1)
    [line] = [line for line in plan.explanation if line.startswith("GPU memory")]
    assert f"about {found.total_gib:.1f} GB for an SD 1.5-sized base model" in line
    assert "gradient_checkpointing=true would save" in line
    checkpointed = memory.estimate(dataclasses.replace(sd15, gradient_checkpointing=True))
    assert found.activations_gib / checkpointed.activations_gib > 5
    assert "gradient_checkpointing" not in memory.describe(dataclasses.replace(sd15, gradient_checkpointing=True))
    doubled = memory.estimate(dataclasses.replace(sd15, batch_size=4))
    assert doubled.activations_gib == pytest.approx(2 * found.activations_gib)
    # Frozen encoders reading fixed captions are dropped after caching: only the UNet's weights stay.
    frozen = memory.estimate(dataclasses.replace(sd15, train_text_encoder=False, shuffle_captions=False))
    assert frozen.weights_gib < found.weights_gib and "UNet 1.6 GB" in memory.describe(
        dataclasses.replace(sd15, train_text_encoder=False, shuffle_captions=False))
    assert memory.estimate(dataclasses.replace(sd15, mixed_precision="no")).weights_gib == pytest.approx(
        2 * found.weights_gib)
    assert memory.estimate(preset("sdxl")).total_gib > found.total_gib


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_the_memory_table_is_what_bench_vram_counts(family: str) -> None:
    """The table in memory.py is bench/vram.py's count with lorabake's own module choice: a change of the
    module set (or of the architectures' configs) must come with new figures."""
    from bench import vram
    from engine.devtools.published import meta_text_encoders, meta_unet
    from engine.training.memory import FAMILY_SIZES

    size = FAMILY_SIZES[family]
    unet_params = sum(p.numel() for p in meta_unet(family).parameters())
    text_params = sum(p.numel() for e in meta_text_encoders(family) for p in e.parameters())
    assert (unet_params, text_params) == (size.unet_params, size.text_params)
    assert (vram.unet_lora_groups(family), vram.text_lora_groups(family)) == (size.unet_lora, size.text_lora)
    if family == "sd15":   # SDXL's activations take ~10 s to count: the bench prints them
        assert vram.saved_activations(family, checkpointing=False)["kept"] == pytest.approx(
            size.activations_gib["kohya"], abs=0.001)


def test_network_locon_sets_kohya_colabs_locon_values_under_typed_ones() -> None:
    locon = apply_overrides(preset("sd15"), {"network": "LoCon"})
    assert (locon.network_dim, locon.network_alpha, locon.conv_dim, locon.conv_alpha) == (16, 8, 8, 1)
    typed = apply_overrides(preset("sdxl"), {"conv_dim": "4", "network": "locon", "dim": "32"})
    assert (typed.network_dim, typed.conv_dim, typed.conv_alpha) == (32, 4, 1)
    assert apply_overrides(locon, {"network": "lora"}).conv_dim == 0
    with pytest.raises(Invalid, match="network must be one of lora, locon"):
        apply_overrides(preset("sd15"), {"network": "loha"})
    with pytest.raises(Invalid, match="conv_dim must be"):
        apply_overrides(preset("sd15"), {"conv_dim": "-1"})
    assert "network" in describe_rules() and "conv_dim" in describe_rules()


def test_options_saved_before_the_network_options_train_as_lorabake_did_then() -> None:
    saved = {k: v for k, v in preset("sd15").to_dict().items()
             if k not in ("conv_dim", "conv_alpha", "network_modules")}
    old = TrainOptions.from_saved(saved)
    assert (old.network_modules, old.conv_dim) == ("attention", 0)
    assert TrainOptions.from_saved(preset("sd15").to_dict()) == preset("sd15")


def test_the_plan_counts_the_lora() -> None:
    """kohya's set at dim 16 on SD1.5: 264 modules; 589,824 parameters per unit of rank (18.9 MB in fp16 at
    dim 16, kohya's familiar file size); LoCon adds 86 modules; attention only, the old 176."""
    lines = {kind: make_plan(apply_overrides(preset("sd15"), overrides), train_images=20)
             for kind, overrides in (("kohya", {}), ("locon", {"network": "locon"}),
                                     ("attention", {"network_modules": "attention"}))}
    assert (lines["kohya"].lora_modules, lines["kohya"].lora_parameters) == (264, 589_824 * 16)
    assert (lines["locon"].lora_modules, lines["attention"].lora_modules) == (350, 176)
    assert any(line.startswith("LoRA: 264 modules, 9.4 M parameters (kohya's module set")
               for line in lines["kohya"].explanation)
    assert lines["locon"].gpu_memory_gb > lines["kohya"].gpu_memory_gb > lines["attention"].gpu_memory_gb
    frozen = make_plan(apply_overrides(preset("sd15"), {"train_text_encoder": "false"}), train_images=20)
    assert frozen.lora_modules == 192


def test_the_step_cost_table_is_what_bench_flops_counts() -> None:
    """The plan's time estimate scales by memory.STEP_COST: bench/flops.py's count on SD1.5."""
    from bench.flops import lora_unet_step_flops
    from engine.training.lora_modules import Network
    from engine.training.memory import STEP_COST

    flops = {name: lora_unet_step_flops("sd15", network) for name, network in (
        ("attention", Network(16, 8, modules="attention")), ("kohya", Network(16, 8)),
        ("locon", Network(16, 8, conv_dim=8, conv_alpha=1)))}
    assert {name: round(value / flops["attention"], 3) for name, value in flops.items()} == STEP_COST
