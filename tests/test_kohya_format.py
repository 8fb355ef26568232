"""kohya LoRA files: key names, real alpha, metadata, and that diffusers loads them into fresh pipelines with the
same effect as the in-memory peft model (DESIGN §3 "LoRA file format")."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors import safe_open
from safetensors.torch import load_file

from engine.devtools.tiny_models import TinyModelPaths
from engine.training.kohya_format import KOHYA_KEY, kohya_metadata, save_kohya_lora, to_kohya_state_dict
from engine.training.lora_files import epoch_file_name, keep_last
from engine.training.lora_inject import add_text_encoder_lora, add_unet_lora, lora_state_dict
from engine.training.lora_modules import Network, sgm_namer

RANK, ALPHA = 4, 2.0
TAGS = {"10_alice": {"1girl": 12, "smile": 7, "東方": 1}}
FAMILIES = {
    "sd15": (StableDiffusionPipeline, ("text_encoder",), 32),
    "sdxl": (StableDiffusionXLPipeline, ("text_encoder", "text_encoder_2"), 64),
}


@pytest.fixture(scope="module")
def tiny(tiny_models: TinyModelPaths) -> TinyModelPaths:
    return tiny_models


def _unet_inputs(family: str) -> dict:
    g = torch.Generator().manual_seed(123)
    cross_dim = FAMILIES[family][2]
    inputs = {
        "sample": torch.randn(2, 4, 16, 16, generator=g),
        "timestep": torch.tensor([10, 500]),
        "encoder_hidden_states": torch.randn(2, 7, cross_dim, generator=g),
    }
    if family == "sdxl":
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, 32, generator=g),
            "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2),
        }
    return inputs


@torch.no_grad()
def _unet_out(pipe: DiffusionPipeline, family: str, scale: float | None = None) -> torch.Tensor:
    kwargs = {} if scale is None else {"cross_attention_kwargs": {"scale": scale}}
    return pipe.unet(**_unet_inputs(family), **kwargs).sample


IDS = torch.tensor([[512, 40, 41, 42, 513] + [513] * 72])


@torch.no_grad()
def _te_out(pipe: DiffusionPipeline, te: str) -> torch.Tensor:
    return getattr(pipe, te)(IDS)[0]


def _pipe_latents(pipe: DiffusionPipeline, scale: float | None = None) -> torch.Tensor:
    kwargs = {} if scale is None else {"cross_attention_kwargs": {"scale": scale}}
    return pipe(
        prompt="a photo of alice",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(7),
        output_type="latent",
        **kwargs,
    ).images


# The networks a file can hold: lorabake's files before kohya's module set ("attention": attention only, SDXL
# named the diffusers way), kohya's set, and LoCon (its 3×3 convolutions at another rank and alpha).
NETWORKS = {"attention": Network(RANK, ALPHA, modules="attention"), "kohya": Network(RANK, ALPHA),
            "locon": Network(RANK, ALPHA, conv_dim=2, conv_alpha=1.5)}


@dataclass
class Baked:
    family: str
    kind: str
    file: Path
    state: dict[str, torch.Tensor]
    ref_unet: torch.Tensor  # in-memory peft model's UNet output (LoRA at scale 1)
    ref_te: dict[str, torch.Tensor]
    base_unet: torch.Tensor  # fresh pipeline, no LoRA
    base_te: dict[str, torch.Tensor]
    base_latents: torch.Tensor
    loaded: DiffusionPipeline  # fresh pipeline + load_lora_weights(file)

    @property
    def network(self) -> Network:
        return NETWORKS[self.kind]


@pytest.fixture(scope="module", params=[(f, k) for f in ("sd15", "sdxl") for k in NETWORKS],
                ids=lambda p: "-".join(p))
def baked(request: pytest.FixtureRequest, tiny: TinyModelPaths, tmp_path_factory: pytest.TempPathFactory) -> Baked:
    family, kind = request.param
    network = NETWORKS[kind]
    cls, tes, _ = FAMILIES[family]
    folder = getattr(tiny, family)
    pipe = cls.from_pretrained(folder)
    params = add_unet_lora(pipe.unet, network)
    for te in tes:
        params += add_text_encoder_lora(getattr(pipe, te), network)
    # peft zero-initialises lora_B; give every LoRA weight small random values so the adapter does something.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    ref_unet = _unet_out(pipe, family)
    ref_te = {te: _te_out(pipe, te) for te in tes}
    # Older lorabake files named SDXL's U-Net the diffusers way.
    names = (lambda path: path) if kind == "attention" else sgm_namer(pipe.unet) if family == "sdxl" else None
    state = to_kohya_state_dict(
        lora_state_dict(pipe.unet), [lora_state_dict(getattr(pipe, te)) for te in tes],
        family=family, network=network, unet_names=names,
    )  # fmt: skip
    meta = kohya_metadata(
        base_model=str(folder), family=family, network=network, unet_lr=5e-4, text_encoder_lr=1e-4,
        epochs=10, epoch=3, steps=120, resolution=512, tag_frequency=TAGS, extra={"ss_seed": "42"},
    )  # fmt: skip
    file = save_kohya_lora(tmp_path_factory.mktemp(family) / "alice.safetensors", state, meta)

    fresh = cls.from_pretrained(folder)
    base_unet = _unet_out(fresh, family)
    base_te = {te: _te_out(fresh, te) for te in tes}
    base_latents = _pipe_latents(fresh)
    fresh.load_lora_weights(file)
    return Baked(family, kind, file, state, ref_unet, ref_te, base_unet, base_te, base_latents, fresh)


def test_keys_follow_kohya_names_with_the_real_alpha(baked: Baked) -> None:
    state, network = load_file(baked.file), baked.network
    assert state.keys() == baked.state.keys()
    assert all(KOHYA_KEY.match(k) for k in state), [k for k in state if not KOHYA_KEY.match(k)][:5]
    alphas = {k: v for k, v in state.items() if k.endswith(".alpha")}
    assert len(alphas) * 3 == len(state)
    assert all(v.dtype == torch.float16 for v in state.values())
    convs = 0
    for key, alpha in alphas.items():
        down = state[key.replace(".alpha", ".lora_down.weight")]
        conv3 = down.ndim == 4 and down.shape[2:] != (1, 1)
        convs += conv3
        rank, expected = (network.conv_dim, network.conv_alpha) if conv3 else (network.dim, network.alpha)
        assert alpha.ndim == 0 and alpha.item() == expected and down.shape[0] == rank, key  # alpha, not rank
    assert (convs > 0) == network.is_locon

    te_prefixes = {k.split("_text_model_")[0] for k in state if not k.startswith("lora_unet_")}
    te_downs = [k for k in state if not k.startswith("lora_unet_") and k.endswith("lora_down.weight")]
    parts = r"self_attn_[qkvout]+_proj" if baked.kind == "attention" else r"(self_attn_[qkvout]+_proj|mlp_fc[12])"
    assert all(re.match(rf"^lora_te[12]?_text_model_encoder_layers_\d+_{parts}\.", k) for k in te_downs)
    expected = {"sd15": {"lora_te"}, "sdxl": {"lora_te1", "lora_te2"}}[baked.family]
    assert te_prefixes == expected
    # 5 layers × 4 projections (+ 2 MLP layers) per text encoder.
    assert len(te_downs) == 5 * (4 if baked.kind == "attention" else 6) * len(expected)
    block = ("input_blocks_4_1" if baked.family == "sdxl" and baked.kind != "attention"
             else "down_blocks_1_attentions_0")
    assert f"lora_unet_{block}_transformer_blocks_0_attn1_to_q.lora_down.weight" in state
    assert (f"lora_unet_{block}_proj_in.lora_down.weight" in state) == (baked.kind != "attention")


def test_metadata_is_sd_scripts_style(baked: Baked) -> None:
    with safe_open(baked.file, framework="pt") as f:
        meta = f.metadata()
    for key in (
        "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_learning_rate", "ss_unet_lr",
        "ss_text_encoder_lr", "ss_num_epochs", "ss_epoch", "ss_steps", "ss_base_model_version",
        "ss_sd_model_name", "ss_resolution", "ss_tag_frequency", "ss_training_started_at", "sshs_model_hash",
        "modelspec.architecture",
    ):  # fmt: skip
        assert isinstance(meta.get(key), str), key
    assert meta["ss_network_module"] == "networks.lora"
    assert (meta["ss_network_dim"], float(meta["ss_network_alpha"])) == ("4", ALPHA)
    network_args = {"conv_dim": "2", "conv_alpha": "1.5"} if baked.kind == "locon" else None
    assert (json.loads(meta["ss_network_args"]) if "ss_network_args" in meta else None) == network_args
    assert meta["ss_base_model_version"] == {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}[baked.family]
    assert (meta["ss_epoch"], meta["ss_num_epochs"], meta["ss_steps"]) == ("3", "10", "120")
    assert meta["ss_resolution"] == "(512, 512)"
    assert meta["ss_sd_model_name"] == baked.family
    assert meta["ss_seed"] == "42"
    assert json.loads(meta["ss_tag_frequency"]) == TAGS
    assert float(meta["ss_unet_lr"]) == 5e-4 and float(meta["ss_text_encoder_lr"]) == 1e-4


def test_diffusers_loads_the_file_and_the_weight_scales_it(baked: Baked) -> None:
    pipe, family = baked.loaded, baked.family
    out = {w: _unet_out(pipe, family, w) for w in (0.0, 0.5, 1.0)}
    assert torch.allclose(out[0.0], baked.base_unet, atol=1e-6, rtol=0)
    dev = {w: (out[w] - baked.base_unet).norm().item() for w in out}
    assert dev[1.0] > dev[0.5] > 0.1 * dev[1.0] > 0
    # The loaded file reproduces the in-memory peft model (alpha 2 / rank 4 = scale 0.5). Had the file said
    # alpha = rank, the LoRA's effect would be doubled: the error would be about as large as the effect itself.
    effect = (baked.ref_unet - baked.base_unet).norm().item()
    error = (out[1.0] - baked.ref_unet).norm().item()
    assert effect > 1e-2 * baked.base_unet.norm().item()
    assert error < 0.02 * effect, (error, effect)


def test_text_encoder_lora_is_applied_after_loading(baked: Baked) -> None:
    for te, ref in baked.ref_te.items():
        loaded, base = _te_out(baked.loaded, te), baked.base_te[te]
        effect = (ref - base).norm().item()
        assert (loaded - base).norm().item() > 0.5 * effect > 0, te
        assert (loaded - ref).norm().item() < 0.02 * effect, te


def test_weight_zero_gives_the_base_pipeline_exactly(baked: Baked) -> None:
    latents = _pipe_latents(baked.loaded, scale=0.0)
    assert torch.allclose(latents, baked.base_latents, atol=1e-6, rtol=0)
    assert not torch.allclose(_pipe_latents(baked.loaded, scale=1.0), baked.base_latents, atol=1e-3)


def test_lora_params_stay_fp32_on_a_half_precision_base(tiny: TinyModelPaths) -> None:
    from transformers import CLIPTextModel

    te = CLIPTextModel.from_pretrained(tiny.sd15 / "text_encoder", torch_dtype=torch.bfloat16)
    params = add_text_encoder_lora(te, NETWORKS["kohya"])
    assert len(params) == 5 * 6 * 2 and all(p.dtype == torch.float32 and p.requires_grad for p in params)
    frozen = [p for n, p in te.named_parameters() if ".lora_" not in n]
    assert frozen and all(not p.requires_grad and p.dtype == torch.bfloat16 for p in frozen)
    assert te(IDS)[0].dtype == torch.bfloat16
    keys = lora_state_dict(te)
    assert "encoder.layers.0.self_attn.q_proj.lora_A.weight" in keys  # transformers 5: no `text_model.`


def _pair(rank: int = RANK) -> dict[str, torch.Tensor]:
    return {"mid.to_q.lora_A.weight": torch.zeros(rank, 8), "mid.to_q.lora_B.weight": torch.zeros(8, rank)}


def test_conversion_refuses_what_it_cannot_represent() -> None:
    sd = to_kohya_state_dict(_pair(), [{"text_model.encoder.layers.0.self_attn.q_proj.lora_A.default.weight":
                                        torch.zeros(RANK, 8),
                                        "text_model.encoder.layers.0.self_attn.q_proj.lora_B.default.weight":
                                        torch.zeros(8, RANK)}], family="sd15", network=NETWORKS["kohya"])  # fmt: skip
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha" in sd
    assert "lora_unet_mid_to_q.lora_up.weight" in sd
    with pytest.raises(ValueError, match="rank"):
        to_kohya_state_dict(_pair(8), [], family="sd15", network=NETWORKS["kohya"])
    with pytest.raises(ValueError, match="text encoder"):
        to_kohya_state_dict(_pair(), [{}, {}], family="sd15", network=NETWORKS["kohya"])
    with pytest.raises(ValueError, match="SGM"):
        to_kohya_state_dict(_pair(), [], family="sdxl", network=NETWORKS["kohya"])
    with pytest.raises(ValueError, match="family"):
        to_kohya_state_dict(_pair(), [], family="sd3", network=NETWORKS["kohya"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lora_B"):
        to_kohya_state_dict({"mid.to_q.lora_A.weight": torch.zeros(RANK, 8)}, [], family="sd15",
                            network=NETWORKS["kohya"])
    with pytest.raises(ValueError, match="DoRA"):
        to_kohya_state_dict({**_pair(), "mid.to_q.lora_magnitude_vector": torch.zeros(8)}, [], family="sd15",
                            network=NETWORKS["kohya"])  # fmt: skip


def test_save_is_atomic_and_checks_metadata(tmp_path: Path) -> None:
    state = to_kohya_state_dict(_pair(), [], family="sd15", network=NETWORKS["kohya"])
    target = tmp_path / "x.safetensors"
    with pytest.raises(TypeError):
        save_kohya_lora(target, state, {"ss_network_dim": 4})  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []
    save_kohya_lora(target, state, {"ss_network_dim": "4"}, dtype=torch.float32)
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]
    assert load_file(target)["lora_unet_mid_to_q.alpha"].dtype == torch.float32


def test_keep_last_keeps_the_newest_epochs(tmp_path: Path) -> None:
    for epoch in (1, 2, 3, 9, 10, 11):
        (tmp_path / epoch_file_name("alice", epoch)).write_bytes(b"x")
    for other in ("alice.safetensors", "alice-bob-01.safetensors", "alicia-01.safetensors", "alice-02.txt"):
        (tmp_path / other).write_bytes(b"x")
    assert epoch_file_name("alice", 1) == "alice-01.safetensors"
    deleted = keep_last(tmp_path, "alice", 3)
    assert sorted(p.name for p in deleted) == ["alice-01.safetensors", "alice-02.safetensors", "alice-03.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["alice-09.safetensors", "alice-10.safetensors", "alice-11.safetensors", "alice.safetensors",
         "alice-bob-01.safetensors", "alicia-01.safetensors", "alice-02.txt"]
    )  # fmt: skip
    assert keep_last(tmp_path, "alice", 5) == []
    keep_last(tmp_path, "alice", 0)
    assert not any(re.match(r"alice-\d+\.safetensors", p.name) for p in tmp_path.iterdir())
    with pytest.raises(ValueError):
        keep_last(tmp_path, "alice", -1)
