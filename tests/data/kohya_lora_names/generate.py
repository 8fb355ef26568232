"""Write kohya_lora_names.json: the LoRA module names and weight shapes sd-scripts' own network code creates.

Run with a checkout of kohya-ss/sd-scripts (the list in the JSON file was made from commit 48d368fa):

    python tests/data/kohya_lora_names/generate.py /path/to/sd-scripts

in an environment with sd-scripts' own pins: transformers 4.54.1 and diffusers 0.32.1 (under transformers 5,
`CLIPTextModel` has no `text_model.` in its module paths, and sd-scripts would name text-encoder modules
`lora_te_encoder_…`, which A1111 ignores), and its `einops`; `torchvision` is imported by sd-scripts' utils
but not used for this, so a stub module serves. Set SD_SCRIPTS_COMMIT when the folder is not a git checkout.

It builds sd-scripts' own U-Nets (`library.original_unet` for SD1.5, `library.sdxl_original_unet` for SDXL)
and transformers' CLIP text encoders from the published configs on the meta device (no weights, seconds),
then calls `networks.lora.create_network` as `train_network.py` does, with `network_dim` 8 / alpha 4 and,
for LoCon, `network_args conv_dim=4 conv_alpha=1`. Each module's `lora_down` / `lora_up` shapes are
written down, so a test can compare lorabake's files key by key without sd-scripts installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

OUT = Path(__file__).with_name("kohya_lora_names.json")
DIM, ALPHA, CONV_DIM, CONV_ALPHA = 8, 4.0, 4, 1.0


def _text_encoder(hidden: int, layers: int, heads: int, intermediate: int, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                            intermediate_size=intermediate, projection_dim=hidden if projection else 768)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _names(network) -> dict[str, list[list[int]]]:
    return {
        module.lora_name: [list(module.lora_down.weight.shape), list(module.lora_up.weight.shape)]
        for module in network.text_encoder_loras + network.unet_loras
    }


def main(sd_scripts: Path) -> None:
    sys.path.insert(0, str(sd_scripts))
    from library import original_unet, sdxl_original_unet
    from networks import lora

    commit = subprocess.run(["git", "-C", str(sd_scripts), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or os.environ.get("SD_SCRIPTS_COMMIT", "unknown")
    with torch.device("meta"):
        models = {
            # SD1.5: runwayml/stable-diffusion-v1-5's unet and text_encoder configs.
            "sd15": (original_unet.UNet2DConditionModel(sample_size=64, attention_head_dim=8,
                                                        cross_attention_dim=768),
                     _text_encoder(768, 12, 12, 3072, projection=False)),
            # SDXL base 1.0: sd-scripts' fixed SDXL U-Net; CLIP ViT-L and OpenCLIP bigG (with projection).
            "sdxl": (sdxl_original_unet.SdxlUNet2DConditionModel(),
                     [_text_encoder(768, 12, 12, 3072, projection=False),
                      _text_encoder(1280, 32, 20, 5120, projection=True)]),
        }
        variants = {}
        for family, (unet, text_encoders) in models.items():
            for network, extra in (("lora", {}), ("locon", {"conv_dim": str(CONV_DIM), "conv_alpha": str(CONV_ALPHA)})):
                # create_network extends a class-level list when conv_dim is set; undo that between calls.
                lora.LoRANetwork.UNET_TARGET_REPLACE_MODULE = ["Transformer2DModel"]
                net = lora.create_network(1.0, DIM, ALPHA, None, text_encoders, unet, **extra)
                variants[f"{family}_{network}"] = dict(sorted(_names(net).items()))
    import diffusers
    import transformers

    made_with = {"sd_scripts_commit": commit, "transformers": transformers.__version__,
                 "diffusers": diffusers.__version__, "network_dim": DIM, "network_alpha": ALPHA,
                 "conv_dim": CONV_DIM, "conv_alpha": CONV_ALPHA, "how": "tests/data/kohya_lora_names/generate.py"}
    lines = ["{", f'  "made_with": {json.dumps(made_with)},', '  "variants": {']
    for v, (variant, names) in enumerate(variants.items()):
        lines.append(f"    {json.dumps(variant)}: {{")
        items = list(names.items())
        lines += [f"      {json.dumps(k)}: {json.dumps(s)}" + ("," if i < len(items) - 1 else "")
                  for i, (k, s) in enumerate(items)]
        lines.append("    }" + ("," if v < len(variants) - 1 else ""))
    lines += ["  }", "}"]
    OUT.write_text("\n".join(lines) + "\n")
    print({variant: len(names) for variant, names in variants.items()})


if __name__ == "__main__":
    main(Path(sys.argv[1]))
