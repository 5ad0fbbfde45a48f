"""``halo doctor``: Strix Halo host and RDMA preflight with exact fixes.

Probes read a filesystem root (the live ``/``, a captured directory or a snapshot archive) plus a few
process facts; each check judges that plain data and returns a :class:`CheckResult`. Nothing here prints
or runs commands: fixes are text for the user to paste.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from haloserve.doctor.facts import HostFacts, live_facts
from haloserve.doctor.host import DoctorOptions, Host
from haloserve.doctor.registry import REGISTRY, run_checks, select
from haloserve.doctor.result import CheckResult, Status, counts, exit_code
from haloserve.doctor.root import Root, live_root, open_root

__all__ = [
    "REGISTRY",
    "CheckResult",
    "DoctorOptions",
    "HostFacts",
    "Root",
    "Status",
    "counts",
    "diagnose",
    "exit_code",
    "facts_for",
    "live_root",
    "open_root",
    "options_for",
]


def facts_for(root: Root, environ: Mapping[str, str] | None = None) -> HostFacts:
    """This process's facts for the live root; the root's recorded facts (or unknown ones) otherwise."""
    if root.live:
        return live_facts(environ)
    return root.manifest.facts or HostFacts()


def options_for(root: Root, models_dir: str | None = None, user: str | None = None) -> DoctorOptions:
    """Options with defaults filled in for this root.

    ``models_dir`` is a path on the live host (made absolute) or inside a captured root; without one,
    a captured root's recorded directory is used, and the user's home on the live host.
    """
    if models_dir:
        if root.live:
            models_dir = str(Path(models_dir).expanduser().resolve())
    elif root.manifest.models_dir:
        models_dir = root.manifest.models_dir
    elif root.live:
        models_dir = str(Path.home())
    return DoctorOptions(models_dir=models_dir, user=user)


def diagnose(
    root: Root,
    facts: HostFacts,
    options: DoctorOptions | None = None,
    checks: Sequence[str] = (),
) -> list[CheckResult]:
    """Run the selected checks (all when ``checks`` is empty) against one root."""
    return run_checks(Host(root, facts, options or options_for(root)), select(checks))
