"""A Ray cluster of several nodes on this machine, every Ray process bound to 127.0.0.1, for the tests and
bench/cluster_scaling.py: a head node without GPUs (the bot's machine) and "GPU" nodes that declare
`lorabake_gpu` and `lorabake_vram_gb` as custom resources in place of real GPUs. Each node is bounded (one
CPU, a small object store); a node can be killed as a machine dies (its raylet and workers at once).

Ray turns 127.0.0.1 into the machine's network address when it resolves where a process is reachable;
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` makes it keep loopback instead (every Ray process started from here
inherits it). It must be set before Ray is imported, hence at this module's import.
"""
from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

from ray.cluster_utils import Cluster  # noqa: E402

LOOPBACK = "127.0.0.1"
NODE_LIMITS = {"num_cpus": 1, "object_store_memory": 80 * 2**20, "node_ip_address": LOOPBACK}
# A dead node is noticed within about a second, not the 15 s and more Ray allows a real network by default.
FAST_HEALTH_CHECKS = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 300,
                      "health_check_timeout_ms": 300, "health_check_failure_threshold": 3}


@dataclass
class LocalCluster:
    cluster: Any
    nodes: dict[str, Any] = field(default_factory=dict)   # name → Ray node

    @classmethod
    def start(cls, gpu_nodes: dict[str, float], models: dict[str, tuple[str, ...]] | None = None) -> LocalCluster:
        """A head and one GPU node per name → its declared GPU memory in GB (and the base-model families each
        declares in its cache, by name)."""
        cluster = Cluster(initialize_head=True, head_node_args={
            **NODE_LIMITS, "include_dashboard": False, "node_name": "head", "_system_config": FAST_HEALTH_CHECKS})
        local = cls(cluster)
        for name, vram_gb in gpu_nodes.items():
            local.add(name, vram_gb, (models or {}).get(name, ()))
        return local

    @property
    def address(self) -> str:
        return self.cluster.address

    def add(self, name: str, vram_gb: float, models: tuple[str, ...] = ()) -> None:
        resources = {"lorabake_gpu": 1, "lorabake_vram_gb": vram_gb, **{f"lorabake_model_{m}": 1 for m in models}}
        self.nodes[name] = self.cluster.add_node(**NODE_LIMITS, node_name=name, resources=resources)
        self.cluster.wait_for_nodes()

    def kill(self, name: str) -> None:
        """The node dies as a machine that loses power: its processes are killed, nothing is said."""
        self.cluster.remove_node(self.nodes.pop(name), allow_graceful=False)

    def shutdown(self) -> None:
        self.cluster.shutdown()
