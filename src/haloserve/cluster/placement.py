"""Where replicas go: a pure choice over the nodes' free memory (the controller applies it with Ray).

A replica is a list of bundles (one for a plain replica; the server and its RPC workers for a split
one), each needing MiB on a distinct node. ``spread`` puts each new replica's server on the node holding
the fewest replicas of its deployment, then the most free memory; ``pack`` on the node with the least
free memory that still fits (fills boxes one by one). A replica that fits nowhere raises
:class:`PlacementError` with the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from haloserve.errors import HaloError
from haloserve.units import MiB, fmt_bytes


class PlacementError(HaloError):
    """A deployment (or the part of it asked for) fits on no node."""

    status = 507
    error_type = "insufficient_storage"
    code = "does_not_fit"


@dataclass
class NodeRoom:
    """One live node as placement sees it."""

    name: str
    total_mib: int
    used_mib: int = 0
    replicas: dict[str, int] = field(default_factory=dict)  # deployment -> replicas with a bundle here

    @property
    def free_mib(self) -> int:
        """MiB not yet promised to a bundle."""
        return self.total_mib - self.used_mib


def _mib(n: int) -> str:
    return fmt_bytes(n * MiB)


def describe(nodes: list[NodeRoom]) -> str:
    """``head 1.95 GiB free of 1.95 GiB, n2 ...`` for error messages."""
    return ", ".join(f"{n.name} {_mib(n.free_mib)} free of {_mib(n.total_mib)}" for n in nodes) or "no nodes"


def _order(nodes: list[NodeRoom], deployment: str, strategy: str) -> list[NodeRoom]:
    if strategy == "pack":
        return sorted(nodes, key=lambda n: (n.free_mib, n.name))
    return sorted(nodes, key=lambda n: (n.replicas.get(deployment, 0), -n.free_mib, n.name))


def place(
    nodes: list[NodeRoom],
    deployment: str,
    need_mib: list[int],
    count: int,
    strategy: str = "spread",
    candidates: list[str] | None = None,
) -> list[list[str]]:
    """Node names for ``count`` new replicas (each a list: one node per bundle), updating ``nodes``.

    All or nothing: when the last replica does not fit, ``nodes`` is left as it was and the error says
    what each replica needs and what each node has free.
    """
    allowed = [n for n in nodes if not candidates or n.name in candidates]
    saved = [(n.used_mib, dict(n.replicas)) for n in nodes]
    chosen: list[list[str]] = []
    try:
        for i in range(count):
            chosen.append(_place_one(allowed, deployment, need_mib, strategy, i, count, nodes))
    except PlacementError:
        for n, (used, reps) in zip(nodes, saved, strict=True):
            n.used_mib, n.replicas = used, reps
        raise
    return chosen


def _place_one(
    allowed: list[NodeRoom],
    deployment: str,
    need_mib: list[int],
    strategy: str,
    i: int,
    count: int,
    everyone: list[NodeRoom],
) -> list[str]:
    picked: list[NodeRoom] = []
    for need in need_mib:
        free = [n for n in _order(allowed, deployment, strategy) if n not in picked and n.free_mib >= need]
        if not free:
            what = (
                f"{len(need_mib)} bundles of " + " + ".join(_mib(b) for b in need_mib)
                if len(need_mib) > 1
                else _mib(need)
            )
            done = f" ({i} of {count} placed)" if count > 1 else ""
            where = describe(allowed if allowed else everyone)
            raise PlacementError(
                f"{deployment} does not fit{done}: a replica needs {what} on distinct nodes; {where}"
                if len(need_mib) > 1
                else f"{deployment} does not fit{done}: a replica needs {what}; {where}"
            )
        picked.append(free[0])
        free[0].used_mib += need
    for n in picked:
        n.replicas[deployment] = n.replicas.get(deployment, 0) + 1
    return [n.name for n in picked]
