"""Intake throughput: 200 pictures through the real intake (validate, normalise, hash, de-duplicate,
store as PNG, insert rows), with pictures prepared ahead in threads (ours) vs one at a time (the same
code with no look-ahead), interleaved rounds in one run.

    .venv/bin/python -m bench.intake_throughput [--images 200 --rounds 2]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from engine.config import IntakeConfig
from engine.devtools.pictures import picture
from engine.intake import IncomingFile, add_images, service
from storage.db import Database
from storage.layout import DataLayout
from storage.projects import insert_project
from storage.users import upsert_user


async def one_round(files: list[IncomingFile], ahead: int) -> float:
    """Seconds to add `files` to a fresh project with `ahead` pictures prepared in advance."""
    service._AHEAD = ahead
    with tempfile.TemporaryDirectory() as tmp:
        layout = DataLayout(Path(tmp))
        db = await Database.open(layout.db_path)
        try:
            async with db.transaction() as tx:
                await upsert_user(tx, 1, "bench")
                project = await insert_project(tx, 1, "Bench", "Bench", "Bench", "man")
            dirs = layout.create_project_dirs(1, "Bench")
            started = time.perf_counter()
            report = await add_images(db, dirs, project.id, 1, "train", files, IntakeConfig())
            elapsed = time.perf_counter() - started
        finally:
            await db.close()
    assert len(report.accepted) == len(files), report.rejected[:3]
    return elapsed


async def main(count: int, rounds: int) -> None:
    files = [IncomingFile(f"p{n:03d}.jpg", picture(n, size=(1024, 768), fmt="JPEG")) for n in range(count)]
    default_ahead = service._AHEAD
    print(f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}; {count} JPEGs 1024×768 "
          f"({sum(len(f.data) for f in files) / count / 1024:.0f} KB each), default limits")
    times: dict[str, list[float]] = {"one at a time": [], f"{default_ahead} ahead (ours)": []}
    for index in range(rounds):
        order = [("one at a time", 1), (f"{default_ahead} ahead (ours)", default_ahead)]
        for label, ahead in order if index % 2 == 0 else reversed(order):
            seconds = await one_round(files, ahead)
            times[label].append(seconds)
            print(f"round {index + 1}  {label:>18}: {count / seconds:6.1f} images/s ({seconds:.1f} s)")
    medians = {label: count / statistics.median(values) for label, values in times.items()}
    for label, rate in medians.items():
        print(f"median {label:>18}: {rate:6.1f} images/s")
    reference, ours = medians.values()
    print(f"ratio ours / one at a time: {ours / reference:.2f}×")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.images, arguments.rounds))
