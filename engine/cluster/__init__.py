"""GPU machines beyond this one: with `[cluster] backend = "ray"` the GPU lane's jobs run on the nodes of a Ray
cluster (ray_lane: the head's side; node_job: a job on a node; transfer: the files that move). Without a
`[cluster]` section nothing here runs and Ray is never imported."""
from __future__ import annotations

from typing import Any

from engine.config import Config
from engine.errors import SetupError


def connect(config: Config) -> Any | None:
    """The cluster GPU-lane jobs go to (engine.cluster.ray_lane.RayCluster), or None: this machine runs them."""
    if not config.cluster.backend:
        return None
    try:
        from engine.cluster.ray_lane import RayCluster
    except ImportError:
        raise SetupError('[cluster] backend = "ray" needs Ray on this machine: pip install -e \'.[cluster]\'') from None
    try:
        return RayCluster.connect(config)
    except (ConnectionError, RuntimeError) as error:
        where = config.cluster.address or "this machine"
        raise SetupError(f"cannot join the Ray cluster at {where}: {error}; start it with `ray start --head "
                         "--node-ip-address <private address>` or fix [cluster] address") from None
