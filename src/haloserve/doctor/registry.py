"""Checks by stable id, and the runner that turns a root into results.

Each check module lists its checks in ``CHECKS``; :data:`REGISTRY` maps ids to them (a mapping, not an
if/elif chain). ``--check X`` selects the check ``X`` and every check whose id starts with ``X.``, so
``--check rdma`` runs all RDMA checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from haloserve.doctor.check import SECTIONS, Check
from haloserve.doctor.host import Host
from haloserve.doctor.result import CheckResult
from haloserve.errors import ConfigError


def _build() -> dict[str, Check]:
    from haloserve.doctor.checks import ALL_CHECKS

    registry: dict[str, Check] = {}
    for check in ALL_CHECKS:
        if check.id in registry:
            raise RuntimeError(f"duplicate doctor check id {check.id!r}")
        if check.section not in SECTIONS:
            raise RuntimeError(f"doctor check {check.id!r} has unknown section {check.section!r}")
        registry[check.id] = check
    return registry


REGISTRY: dict[str, Check] = _build()


def select(ids: Sequence[str]) -> list[Check]:
    """The checks named by ``ids`` (exact ids or id prefixes) in registry order; all when empty.

    An id that matches nothing is a :class:`ConfigError` listing the known ids.
    """
    if not ids:
        return list(REGISTRY.values())
    chosen: set[str] = set()
    for wanted in ids:
        key = wanted.strip().lower()
        matches = [c for c in REGISTRY if c == key or c.startswith(key + ".")]
        if not matches:
            known = ", ".join(REGISTRY)
            raise ConfigError(f"--check: unknown check {wanted!r} (known: {known})")
        chosen.update(matches)
    return [c for cid, c in REGISTRY.items() if cid in chosen]


def run_checks(host: Host, checks: Iterable[Check]) -> list[CheckResult]:
    """Run checks against one host, in order."""
    return [check(host) for check in checks]
