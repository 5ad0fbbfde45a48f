"""The controller's records: the live halo nodes Ray knows, and what it placed for each replica."""

from __future__ import annotations

from typing import Any

import ray

from haloserve.cluster import MEMORY_RESOURCE, NODE_RESOURCE_PREFIX


def live_nodes() -> dict[str, dict[str, Any]]:
    """Alive halo nodes by name: Ray node id, address and registered MiB."""
    out: dict[str, dict[str, Any]] = {}
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = n.get("Resources", {})
        names = [k[len(NODE_RESOURCE_PREFIX) :] for k in res if k.startswith(NODE_RESOURCE_PREFIX)]
        if names:
            out[names[0]] = {
                "node_id": n["NodeID"],
                "address": n.get("NodeManagerAddress"),
                "total_mib": int(res.get(MEMORY_RESOURCE, 0)),
            }
    return out


class ReplicaRecord:
    """The controller's record of one replica: its bundles' nodes, placement group and actors."""

    def __init__(self, rid: str, nodes: list[str], gen: int = 0, moves: int = 0) -> None:
        self.id = rid
        self.nodes = nodes
        self.gen = gen  # bumped on each re-placement: actor and group names stay unique
        self.moves = moves  # re-placements to another node (each counts as a restart)
        self.pg: Any = None
        self.actors: list[Any] = []
        self.status: dict[str, Any] = {"id": rid, "node": nodes[0], "state": "placing", "restarts": 0}
        self.placed_at = 0.0
        self.retry_at = 0.0

    def to_dict(self) -> dict[str, Any]:
        """What is saved in ``deployments.json``."""
        return {"id": self.id, "nodes": self.nodes, "gen": self.gen, "moves": self.moves}
