"""The toy world's tagger, with WD14's interface: model.onnx takes (N, 448, 448, 3) BGR float32 in 0..255
and gives one sigmoid per row of selected_tags.csv (4 ratings, then the world's tags as general tags,
underscores for spaces as in the real file). Inside: a 7×7 average pool back to 64 px, then a small CNN.

It learns from the pictures exactly as the tagging job prepares them (`engine.tagging.preprocess.prepare`):
clean 64 px pictures, the 256 px versions members upload, and VAE round trips, which look like what the
base model draws. The figures are drawn from the world's priors without the base model's exclusions, so
the character's look is read too.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine.devtools.tiny_models import TAGGER_SIZE, _write_selected_tags
from engine.devtools.toy_world import world
from engine.devtools.toy_world.fit import descend, one_cycle_adamw
from engine.tagging.preprocess import prepare

_POOL = TAGGER_SIZE // world.SIZE   # 448 / 64 = 7
_RATINGS = (("general", 4.0), ("sensitive", -4.0), ("questionable", -6.0), ("explicit", -8.0))
_CHANNELS = (16, 32, 64)
_HIDDEN = 128


def csv_name(tag: str) -> str:
    return tag.replace(" ", "_")


def _tagger_input(image: Image.Image) -> np.ndarray:
    """What the ONNX graph sees after its pooling: (64, 64, 3) BGR in 0..255."""
    big = prepare(image, TAGGER_SIZE)
    return big.reshape(world.SIZE, _POOL, world.SIZE, _POOL, 3).mean(axis=(1, 3))


def _targets(figure: world.Figure, tags: list[str]) -> np.ndarray:
    present = set(figure.tags())
    return np.array([tag in present for tag in tags], dtype=np.float32)


def _network(num_tags: int) -> Any:
    import torch

    layers: list[Any] = []
    before = 3
    for channels in _CHANNELS:
        layers += [torch.nn.Conv2d(before, channels, 3, stride=2, padding=1), torch.nn.ReLU()]
        before = channels
    side = world.SIZE // 2 ** len(_CHANNELS)
    layers += [torch.nn.Flatten(), torch.nn.Linear(before * side * side, _HIDDEN), torch.nn.ReLU(),
               torch.nn.Linear(_HIDDEN, num_tags)]
    return torch.nn.Sequential(*layers)


def _dataset(vae: Any, seed: int, count: int) -> tuple[np.ndarray, list[world.Figure]]:
    from engine.devtools.toy_world.build import round_trip

    rng = random.Random(seed)
    figures = [world.random_figure(rng) for _ in range(count)]
    small = np.stack([np.asarray(world.draw(f)) for f in figures])
    recon = round_trip(vae, small[: count // 2])
    inputs = []
    for n, figure in enumerate(figures):
        if n < count // 2:
            picture = Image.fromarray(recon[n])
        elif n % 3 == 0:
            picture = world.draw(figure, size=4 * world.SIZE)
        else:
            picture = Image.fromarray(small[n])
        inputs.append(_tagger_input(picture))
    return np.stack(inputs).astype(np.float32), figures


def train_and_write(folder: Path, vae: Any, *, seed: int, steps: int, bar: Any, pictures: int = 12_000,
                    held_out: int = 1_000) -> dict[str, float]:
    """Trains the tagger, writes model.onnx + selected_tags.csv, returns per-attribute accuracy on
    `held_out` new pictures, read through the real Tagger (onnxruntime) as the tagging job reads them."""
    import torch

    tags = world.all_tags()
    inputs, figures = _dataset(vae, seed, max(pictures if steps > 10 else 64, 8))
    targets = np.stack([_targets(f, tags) for f in figures])
    torch.manual_seed(seed)
    net = _network(len(tags))
    optimizer, schedule = one_cycle_adamw(net.parameters(), 2e-3, steps, weight_decay=1e-4, warmup=0.1)
    x_all = torch.from_numpy(inputs).permute(0, 3, 1, 2) / 127.5 - 1.0
    y_all = torch.from_numpy(targets)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        picks = torch.randint(0, len(x_all), (64,), generator=gen)
        x = x_all[picks] + 0.03 * torch.randn(x_all[picks].shape, generator=gen)   # a little sampling noise
        descend(torch.nn.functional.binary_cross_entropy_with_logits(net(x), y_all[picks]), optimizer, schedule, bar)
    net.eval()
    folder.mkdir(parents=True, exist_ok=True)
    rows = [(9999999, name, 9, 800_000 // (i + 1)) for i, (name, _) in enumerate(_RATINGS)]
    rows += [(200_000 + i, csv_name(tag), 0, 1_000_000 // (i + 1)) for i, tag in enumerate(tags)]
    _write_selected_tags(folder / "selected_tags.csv", rows)
    (folder / "model.onnx").write_bytes(_onnx(net))
    reader = ToyReader(folder)
    rng = random.Random(seed + 1)
    check = [world.random_figure(rng) for _ in range(held_out if steps > 10 else 8)]
    return reader.accuracy([world.draw(f) for f in check], check)


def _onnx(net: Any) -> bytes:
    """The trained network as an ONNX graph with WD14's input and output, written node by node."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights: list[Any] = []

    def const(name: str, value: np.ndarray) -> str:
        weights.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    nodes = [
        helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("AveragePool", ["nchw"], ["pooled"], kernel_shape=[_POOL] * 2, strides=[_POOL] * 2),
        helper.make_node("Div", ["pooled", const("half_range", np.array(127.5))], ["scaled"]),
        helper.make_node("Sub", ["scaled", const("one", np.array(1.0))], ["x0"]),
    ]
    convs = [m for m in net if m.__class__.__name__ == "Conv2d"]
    linears = [m for m in net if m.__class__.__name__ == "Linear"]
    current = "x0"
    for i, conv in enumerate(convs):
        w, b = const(f"conv{i}.w", conv.weight.detach().numpy()), const(f"conv{i}.b", conv.bias.detach().numpy())
        nodes += [helper.make_node("Conv", [current, w, b], [f"conv{i}"], kernel_shape=[3, 3], strides=[2, 2],
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"conv{i}"], [f"act{i}"])]
        current = f"act{i}"
    hidden, last = linears
    # Ratings come first in selected_tags.csv: constant logits, every toy picture is "general".
    out_w = np.concatenate([np.zeros((len(_RATINGS), _HIDDEN)), last.weight.detach().numpy()])
    out_b = np.concatenate([[logit for _, logit in _RATINGS], last.bias.detach().numpy()])
    nodes += [
        helper.make_node("Flatten", [current], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", const("fc.w", hidden.weight.detach().numpy()),
                                  const("fc.b", hidden.bias.detach().numpy())], ["fc"], transB=1),
        helper.make_node("Relu", ["fc"], ["fc_act"]),
        helper.make_node("Gemm", ["fc_act", const("out.w", out_w), const("out.b", out_b)], ["logits"], transB=1),
        helper.make_node("Sigmoid", ["logits"], ["output"]),
    ]
    image = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", TAGGER_SIZE, TAGGER_SIZE, 3])
    probabilities = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", len(out_b)])
    graph = helper.make_graph(nodes, "toy_world_tagger", [image], [probabilities], weights)
    model = helper.make_model(graph, producer_name="lorabake toy world", opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


class ToyReader:
    """Reads a picture's attributes with the toy tagger, as the tagging job does: the real Tagger,
    preprocessing and Captioner (thresholds, underscores), with the job's default options."""

    def __init__(self, folder: Path) -> None:
        from engine.tagging.model import Tagger
        from engine.tagging.options import TagOptions
        from engine.tagging.tags import Captioner

        self.tagger = Tagger.open(str(folder), "")
        self._captioner = Captioner(self.tagger.table, TagOptions(model=str(folder), include_ratings=False))

    def tags(self, image: Image.Image) -> set[str]:
        probabilities = self.tagger.predict(prepare(image, self.tagger.size)[None])[0]
        return set(self._captioner.tags(probabilities))

    def read(self, image: Image.Image) -> dict[str, str | None]:
        """attribute → the value whose tag is found (None when none or several are)."""
        found = self.tags(image)
        read: dict[str, str | None] = {}
        for attribute in world.ATTRIBUTES:
            hits = [v for v in world.PRIORS[attribute] if world.attribute_tag(attribute, v) in found]
            if attribute == "pattern":
                hits = hits or ["plain"]
            read[attribute] = hits[0] if len(hits) == 1 else None
        return read

    def accuracy(self, images: list[Image.Image], figures: list[world.Figure]) -> dict[str, float]:
        correct = dict.fromkeys(world.ATTRIBUTES, 0)
        for image, figure in zip(images, figures, strict=True):
            read = self.read(image)
            for attribute in world.ATTRIBUTES:
                correct[attribute] += read[attribute] == figure.value(attribute)
        return {a: round(c / max(1, len(figures)), 4) for a, c in correct.items()}
