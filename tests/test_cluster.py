"""The GPU lane on a real Ray cluster of three nodes on this machine (engine.devtools.local_cluster: every Ray
process on 127.0.0.1; a head without GPUs and two "GPU" nodes declaring custom resources in place of GPUs),
driven through the real engine: jobs spread over the nodes in fair-share order, progress comes back live, a
cancel reaches the node, a node killed mid-training sends the job back to resume from its saved epoch on the
other node, and a head that restarts (even killed) loses no job."""
from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from safetensors.torch import load_file

from bot.job_messages import job_line
from engine.config import ClusterConfig, Config, IntakeConfig, QueueConfig, SamplesConfig, WebConfig
from engine.devtools.local_cluster import LocalCluster  # before anything imports Ray (see there)
from engine.devtools.pictures import picture
from engine.errors import SetupError
from engine.facade import Engine
from engine.intake import IncomingFile
from storage.layout import file_sha256
from tests.conftest import ALICE, ALICE_ACTOR, BOB_ACTOR, REPO
from tests.helpers import TINY, tiny_config

NODES = {"gpu-a": 24.0, "gpu-b": 12.0}
MODELS = {"gpu-a": ("sd15",)}   # the base models each node declares it has


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[LocalCluster]:
    # Node processes start now, with this environment: the test job kinds must be importable there.
    saved = {key: os.environ.get(key) for key in ("LORABAKE_JOB_PLUGINS", "PYTHONPATH")}
    os.environ["LORABAKE_JOB_PLUGINS"] = "tests.jobkinds"
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), saved["PYTHONPATH"]]))
    cluster = LocalCluster.start(NODES, MODELS)
    try:
        yield cluster
    finally:
        cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def head_config(data_dir: Path, tiny_models, address: str) -> Config:
    """The head's configuration: the tiny models, GPU-lane jobs to the cluster at `address`."""
    config = tiny_config(Config(data_dir=data_dir, queue=QueueConfig(cancel_grace_s=1.0), web=WebConfig(port=0),
                                intake=IntakeConfig(min_side=32), samples=SamplesConfig(auto_after_training=False)),
                         tiny_models)
    return dataclasses.replace(config, cluster=ClusterConfig(backend="ray", address=address, gpus_per_job=0))


@pytest.fixture
def config(tmp_path: Path, ray_cluster: LocalCluster, tiny_models) -> Config:
    for name, vram in NODES.items():   # a test that killed a node leaves the next one a whole cluster
        if name not in ray_cluster.nodes:
            ray_cluster.add(name, vram, MODELS.get(name, ()))
    return head_config(tmp_path / "data", tiny_models, ray_cluster.address)


@pytest.fixture
async def head(config: Config) -> AsyncIterator[Engine]:
    engine = await Engine.open(config)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.close()


async def until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def until_job(engine: Engine, job_id: int, check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not check(job := await engine.job(job_id)):
        assert time.monotonic() < deadline, f"job {job_id} stayed {job.state}: {job.progress} {job.error}"
        await asyncio.sleep(0.05)
    return job


def started(gate: Path) -> bool:
    return Path(f"{gate}.started").exists()


def pid_gone(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return not status.exists() or "zombie" in status.read_text()


async def test_jobs_spread_over_the_nodes_in_fair_share_order_with_live_progress(config: Config, tmp_path: Path):
    gates = {name: tmp_path / name for name in ("alice1", "alice2", "bob1")}
    head = await Engine.open(config)
    try:
        await _spread(head, gates)
    finally:
        await head.close()


async def _spread(head: Engine, gates: dict[str, Path]) -> None:
    # Queued before the lanes start, so that the order is fair share's, not the order of arrival.
    alice1 = await head.enqueue(ALICE_ACTOR, "hold", params={"gate": str(gates["alice1"])})
    alice2 = await head.enqueue(ALICE_ACTOR, "hold", params={"gate": str(gates["alice2"])})
    bob1 = await head.enqueue(BOB_ACTOR, "hold", params={"gate": str(gates["bob1"])})
    await head.start()
    # Two nodes: two jobs at once, and Bob's goes before Alice's second (fair share holds across nodes).
    await until(lambda: started(gates["alice1"]) and started(gates["bob1"]))
    first, second = [await until_job(head, job.id, lambda j: (j.progress or {}).get("message") == "holding")
                     for job in (alice1, bob1)]
    assert {first.progress["node"], second.progress["node"]} == set(NODES)
    assert (await head.job(alice2.id)).state == "queued" and not started(gates["alice2"])
    assert f"on {first.progress['node']}" in job_line(first)   # what /lora queue shows
    gates["alice1"].write_text("go")
    done = await until_job(head, alice1.id, lambda j: j.state == "done")
    assert done.result == {"released": True, "attempt": 1}
    # The node it freed takes the next job.
    await until(lambda: started(gates["alice2"]))
    nxt = await until_job(head, alice2.id, lambda j: (j.progress or {}).get("node"))
    assert nxt.progress["node"] == first.progress["node"]
    for gate in gates.values():
        gate.write_text("go")
    for job in (alice2, bob1):
        assert (await until_job(head, job.id, lambda j: j.state == "done")).result["released"]
    log = head.layout.job_log(alice1.id).read_text()
    assert f"running on the GPU machine {first.progress['node']}" in log


async def test_a_cancel_stops_the_job_on_its_node_within_seconds(head: Engine, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    job = await head.enqueue(ALICE_ACTOR, "hold", params={"gate": str(gate), "timeout": 120})
    await until(lambda: started(gate))
    worker_pid = int(Path(f"{gate}.started").read_text())   # the worker process on the node
    began = time.monotonic()
    await head.cancel(ALICE_ACTOR, job.id)
    await until(lambda: pid_gone(worker_pid), timeout=10)
    assert time.monotonic() - began < 5
    assert (await head.job(job.id)).state == "cancelled"


async def test_a_job_no_node_can_hold_fails_with_the_reason(config: Config) -> None:
    config = dataclasses.replace(config, cluster=dataclasses.replace(config.cluster, sd15_vram_gb=40))
    engine = await Engine.open(config)
    await engine.start()
    try:
        job = await engine.enqueue(ALICE_ACTOR, "quick", params={"base_model": config.models.sd15})
        failed = await until_job(engine, job.id, lambda j: j.state == "failed")
        assert "needs a GPU machine with 40 GB of GPU memory" in failed.error
        assert "the largest in the cluster declares 24 GB" in failed.error
    finally:
        await engine.close()


async def test_nodes_that_declare_their_base_models_get_only_jobs_of_those(config: Config) -> None:
    config = dataclasses.replace(config, cluster=dataclasses.replace(config.cluster, nodes_declare_models=True))
    engine = await Engine.open(config)
    await engine.start()
    try:
        for _ in range(3):   # wherever Ray would put it otherwise: only gpu-a has the SD1.5 base model
            job = await engine.enqueue(ALICE_ACTOR, "quick", params={"base_model": config.models.sd15})
            assert (await until_job(engine, job.id, lambda j: j.state == "done")).progress["node"] == "gpu-a"
        job = await engine.enqueue(ALICE_ACTOR, "quick", params={"base_model": config.models.sdxl})
        failed = await until_job(engine, job.id, lambda j: j.state == "failed")
        assert 'no GPU machine has its base model: a node that has it in its cache declares "lorabake_model_sdxl"' \
            in failed.error
    finally:
        await engine.close()


async def _captioned_project(engine: Engine) -> None:
    await engine.create_project(ALICE_ACTOR, "XingBar30", "XingBar", "man")
    await engine.add_images(ALICE_ACTOR, "XingBar30", [IncomingFile(f"p{n}.png", picture(n)) for n in range(2)])
    for image in await engine.images(ALICE_ACTOR, "XingBar30"):
        await engine.curation.edit_caption(ALICE_ACTOR, "XingBar30", image.id, "solo, shirt")


async def test_tagging_goes_to_an_idle_gpu_node_and_stays_here_while_they_are_busy(head: Engine, tmp_path: Path):
    await _captioned_project(head)
    job = await head.tag(ALICE_ACTOR, "XingBar30")
    assert job.lane == "cpu"   # onnxruntime has no CUDA on the head
    tagged = await until_job(head, job.id, lambda j: j.state in ("done", "failed"))
    assert tagged.state == "done", tagged.error
    assert tagged.progress["node"] in NODES and tagged.result["images"] == 2
    assert all(caption for caption in (await head.captions(ALICE_ACTOR, "XingBar30")).values())
    gates = [tmp_path / f"gate{n}" for n in range(2)]   # both nodes busy: tagging runs on the head
    for gate in gates:
        await head.enqueue(BOB_ACTOR, "hold", params={"gate": str(gate)})
    await until(lambda: all(started(gate) for gate in gates))
    job = await head.tag(ALICE_ACTOR, "XingBar30")
    tagged = await until_job(head, job.id, lambda j: j.state in ("done", "failed"))
    assert tagged.state == "done" and "node" not in (tagged.progress or {})
    for gate in gates:
        gate.write_text("go")


TRAINING = dict(item.split("=") for item in f"{TINY}, epochs=3, repeats=2".split(", "))


async def test_a_node_killed_mid_training_resumes_on_the_other_node_from_the_saved_epoch(
        head: Engine, ray_cluster: LocalCluster) -> None:
    await _captioned_project(head)
    events = head.subscribe()
    job = await head.training.start(ALICE_ACTOR, "XingBar30", dict(TRAINING))
    output = head.layout.project(ALICE, "XingBar30").output
    # Epoch 1 and the state to resume from reach the head before the job says so.
    while not ((event := await asyncio.wait_for(events.get(), 120)).job_id == job.id and event.type == "artifact"):
        pass
    assert event.data["registered"] and Path(output / Path(event.data["path"]).name).is_file()
    assert (output / "state" / "state.pt").is_file()
    first_node = (await head.job(job.id)).progress["node"]
    ray_cluster.kill(first_node)

    requeued = await until_job(head, job.id, lambda j: j.state == "queued" or j.state != "running", timeout=60)
    assert requeued.state in ("queued", "running", "done"), requeued.error
    finished = await until_job(head, job.id, lambda j: j.state in ("done", "failed"), timeout=240)
    assert finished.state == "done", finished.error
    assert finished.result["resumed_from_epoch"] >= 1 and finished.attempts == 2
    notes = [e for e in await head.job_events(job.id) if e.type == "requeued"]
    assert len(notes) == 1 and f"the GPU machine {first_node} stopped answering" in notes[0].data["reason"]
    # Every file came back, was checked and registered; the state the node removed at the end is gone here too.
    assert not (output / "state" / "state.pt").exists()
    registered = {a.path: a for a in await head.artifacts(ALICE_ACTOR, "XingBar30")}
    assert {f"output/XingBar30{suffix}.safetensors" for suffix in ("-01", "-02", "-03", "")} <= set(registered)
    final = registered["output/XingBar30.safetensors"]
    assert final.sha256 == file_sha256(output / "XingBar30.safetensors")
    assert load_file(output / "XingBar30.safetensors")   # a whole, loadable file


async def test_the_head_killed_mid_job_loses_nothing(config: Config, tmp_path: Path) -> None:
    """kill -9 of the head (the bot's process) while a node runs its job: the node's worker goes with the
    head's actors, and the next start puts the job back in the queue and runs it on a node again."""
    gate = tmp_path / "gate"
    setup = await Engine.open(config)
    job = await setup.enqueue(ALICE_ACTOR, "hold", params={"gate": str(gate), "timeout": 120})
    await setup.close()
    script = ("import asyncio, sys\n"
              "from tests.test_cluster import run_head_forever\n"
              "asyncio.run(run_head_forever(*sys.argv[1:]))\n")
    arguments = [str(config.data_dir), config.models.sd15, config.tagger.model, config.cluster.address]
    head_process = subprocess.Popen([sys.executable, "-c", script, *arguments], cwd=REPO, env=os.environ.copy())
    try:
        await until(lambda: started(gate) or head_process.poll() is not None, timeout=60)
        assert head_process.poll() is None
        worker_pid = int(Path(f"{gate}.started").read_text())
        os.kill(head_process.pid, signal.SIGKILL)
        head_process.wait(10)
    finally:
        if head_process.poll() is None:
            head_process.kill()
    await until(lambda: pid_gone(worker_pid), timeout=30)   # the head's actors died with it
    Path(f"{gate}.started").unlink()
    engine = await Engine.open(config)
    await engine.start()
    try:
        assert [j.id for j in engine.recovered] == [job.id]
        await until(lambda: started(gate))
        gate.write_text("go")
        done = await until_job(engine, job.id, lambda j: j.state == "done")
        assert done.attempts == 2 and done.result == {"released": True, "attempt": 2}
    finally:
        await engine.close()


async def run_head_forever(data_dir: str, sd15: str, tagger: str, address: str) -> None:
    """The head of the test above, in its own process (killed by the test)."""
    models = types.SimpleNamespace(sd15=sd15, tagger=tagger)
    engine = await Engine.open(head_config(Path(data_dir), models, address))
    await engine.start()
    await asyncio.Event().wait()


def test_without_a_cluster_section_ray_is_never_imported(tmp_path: Path) -> None:
    code = ("import asyncio, sys\n"
            "from engine.config import Config\n"
            "from engine.facade import Engine\n"
            "async def main():\n"
            f"    engine = await Engine.open(Config(data_dir=__import__('pathlib').Path({str(tmp_path)!r})))\n"
            "    await engine.start()\n"
            "    await engine.close()\n"
            "asyncio.run(main())\n"
            "import bot.app, bot.cli\n"
            "print('ray' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


async def test_a_cluster_address_nobody_answers_at_stops_the_start_with_what_to_do(config: Config) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{unused.getsockname()[1]}"   # bound, not listening: refused
        config = dataclasses.replace(config, cluster=dataclasses.replace(config.cluster, address=address))
        began = time.monotonic()
        with pytest.raises(SetupError) as error:
            await Engine.open(config)
    assert time.monotonic() - began < 10
    assert f"cannot join the Ray cluster at {address}" in str(error.value) and "ray start --head" in str(error.value)
