"""lorabake's LoRA network is kohya's: the same modules, names and shapes as sd-scripts' `networks.lora` on
the published SD1.5 and SDXL architectures (built on the meta device: shapes only, seconds), compared key by
key with the list sd-scripts' own code made (tests/data/kohya_lora_names, with how it was made)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.devtools.published import meta_text_encoders, meta_unet
from engine.training.kohya_format import to_kohya_state_dict
from engine.training.lora_inject import add_text_encoder_lora, add_unet_lora, lora_state_dict
from engine.training.lora_modules import Network, sgm_namer, unet_targets

KOHYA = json.loads((Path(__file__).parent / "data" / "kohya_lora_names" / "kohya_lora_names.json").read_text())
MADE_WITH = KOHYA["made_with"]
NETWORKS = {
    "lora": Network(MADE_WITH["network_dim"], MADE_WITH["network_alpha"]),
    "locon": Network(MADE_WITH["network_dim"], MADE_WITH["network_alpha"], conv_dim=MADE_WITH["conv_dim"],
                     conv_alpha=MADE_WITH["conv_alpha"]),
}


def _kohya_state(family: str, network: Network) -> dict[str, torch.Tensor]:
    unet, encoders = meta_unet(family), meta_text_encoders(family)
    add_unet_lora(unet, network)
    for encoder in encoders:
        add_text_encoder_lora(encoder, network)
    return to_kohya_state_dict(lora_state_dict(unet), [lora_state_dict(e) for e in encoders], family=family,
                               network=network, unet_names=sgm_namer(unet) if family == "sdxl" else None)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("kind", ["lora", "locon"])
def test_the_network_has_kohyas_modules_names_and_shapes(family: str, kind: str) -> None:
    network = NETWORKS[kind]
    state = _kohya_state(family, network)
    ours = {key.removesuffix(".lora_down.weight"): [list(state[key].shape),
                                                    list(state[key.replace("lora_down", "lora_up")].shape)]
            for key in state if key.endswith(".lora_down.weight")}
    theirs = KOHYA["variants"][f"{family}_{kind}"]
    assert sorted(set(theirs) - set(ours))[:5] == [] and sorted(set(ours) - set(theirs))[:5] == []
    assert ours == theirs
    assert len(state) == 3 * len(theirs)
    # alpha: the conv_dim modules (3×3 down weights) carry conv_alpha, every other module the network's alpha.
    for name, (down, _) in theirs.items():
        expected = network.conv_alpha if down[2:] not in ([], [1, 1]) else network.alpha
        assert state[f"{name}.alpha"].item() == expected, name


def test_module_counts_are_the_issues_figures() -> None:
    """kohya's default set: 264 modules for SD1.5 (U-Net 192, text encoder 72), 986 for SDXL."""
    assert len(KOHYA["variants"]["sd15_lora"]) == 264 and len(KOHYA["variants"]["sdxl_lora"]) == 986
    unet = meta_unet("sd15")
    assert len(unet_targets(unet, NETWORKS["lora"])) == 192
    attention_only = unet_targets(unet, Network(8, 4, modules="attention"))
    assert len(attention_only) == 128 and all(p.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v", "0")
                                              for p in attention_only)


def test_sgm_names_refuse_modules_outside_the_blocks() -> None:
    name = sgm_namer(meta_unet("sdxl"))
    assert name("down_blocks.1.attentions.0.proj_in") == "input_blocks.4.1.proj_in"
    assert name("up_blocks.0.upsamplers.0.conv") == "output_blocks.2.2.conv"
    with pytest.raises(ValueError, match="conv_in"):
        name("conv_in")
    with pytest.raises(ValueError, match="norm1"):
        name("mid_block.resnets.0.norm1")
