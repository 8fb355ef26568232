"""What moves between the head and a GPU node (engine.cluster.transfer), without Ray: a project's inputs out
and back whole, links never sent, and nothing a node returns is taken as a path or a file unchecked."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.cluster.transfer import (
    Changes,
    Rejected,
    apply_changes,
    changes_since,
    check_file,
    pack_inputs,
    project_path,
    scan,
    unpack_inputs,
)
from engine.devtools.pictures import picture


def _project(root: Path) -> Path:
    for folder in ("dataset", "reg", "output/state", "samples"):
        (root / folder).mkdir(parents=True)
    (root / "dataset" / "a.png").write_bytes(picture(1))
    (root / "dataset" / "a.txt").write_text("xingbar, solo")
    (root / "reg" / "r.png").write_bytes(picture(2))
    (root / "output" / "state" / "state.pt").write_bytes(b"state")
    (root / "samples" / "grid.png").write_bytes(picture(3))   # an output: never sent out
    (root / "dataset" / ".a.png.tmp").write_bytes(b"half-written")
    return root


def test_inputs_go_out_whole_without_samples_links_or_half_written_files(tmp_path: Path) -> None:
    project = _project(tmp_path / "head")
    (project / "dataset" / "link.png").symlink_to("/etc/passwd")
    node = tmp_path / "node"
    unpack_inputs(pack_inputs(project), node)
    assert sorted(scan(node)) == ["dataset/a.png", "dataset/a.txt", "output/state/state.pt", "reg/r.png"]
    assert (node / "dataset" / "a.png").read_bytes() == picture(1)
    assert (node / "samples").is_dir() and not any((node / "samples").iterdir())


def test_changes_since_names_new_changed_and_removed_files(tmp_path: Path) -> None:
    project = _project(tmp_path / "p")
    before = scan(project)
    (project / "output" / "x-01.safetensors").write_bytes(b"epoch")
    (project / "dataset" / "a.txt").write_text("xingbar, solo, shirt")
    (project / "output" / "state" / "state.pt").unlink()
    changes, after = changes_since(project, before)
    assert dict(changes.files) == {"dataset/a.txt": b"xingbar, solo, shirt", "output/x-01.safetensors": b"epoch"}
    assert changes.removed == ["output/state/state.pt"]
    assert not changes_since(project, after)[0]


@pytest.mark.parametrize("path", ["../etc/passwd", "/abs/x.png", "output/../../x", "dataset", "other/x.png",
                                  "output//x", "output/./x", "output\\..\\x", ""])
def test_a_path_from_a_node_outside_the_project_folders_is_refused(tmp_path: Path, path: str) -> None:
    with pytest.raises(Rejected):
        project_path(tmp_path, path)


def _safetensors(path: Path) -> bytes:
    save_file({"w": torch.ones(2, 2)}, str(path))
    return path.read_bytes()


def test_files_are_checked_for_what_their_names_say(tmp_path: Path) -> None:
    good = _safetensors(tmp_path / "good.safetensors")
    check_file("output/x.safetensors", good)
    check_file("samples/g.png", picture(1))
    check_file("samples/scores.json", b'{"a": 1}')
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 4096]}}).encode()
    lying = struct.pack("<Q", len(header)) + header + b"\0" * 16
    for name, data in [("output/x.safetensors", b"not a safetensors file"),
                       ("output/x.safetensors", struct.pack("<Q", 10**9) + b"{}"),
                       ("output/x.safetensors", lying),
                       ("samples/g.png", b"GIF89a"), ("samples/s.json", b"{broken")]:
        with pytest.raises(Rejected):
            check_file(name, data)


def test_apply_writes_what_passes_and_keeps_the_project_intact_otherwise(tmp_path: Path) -> None:
    project = _project(tmp_path / "p")
    epoch = _safetensors(tmp_path / "e.safetensors")
    problems = apply_changes(project, Changes(
        files=[("output/x-01.safetensors", epoch), ("../escape.png", picture(1)),
               ("output/x-02.safetensors", b"garbage"), ("samples/grid.png", b"not png")],
        removed=["output/state/state.pt", "../../etc/hostname"]))
    assert len(problems) == 4
    assert (project / "output" / "x-01.safetensors").read_bytes() == epoch
    assert not (tmp_path / "escape.png").exists() and not (project / "output" / "x-02.safetensors").exists()
    assert (project / "samples" / "grid.png").read_bytes() == picture(3)   # the old file, untouched
    assert not (project / "output" / "state" / "state.pt").exists()
