"""``halo doctor``: Strix Halo host and RDMA preflight with exact fixes.

Probes read a filesystem root (the live ``/``, a captured directory or a snapshot archive) plus a few
process facts; each check judges that plain data and returns a :class:`CheckResult`. Nothing here prints
or runs commands: fixes are text for the user to paste.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
]


def facts_for(root: Root, environ: Mapping[str, str] | None = None) -> HostFacts:
    """This process's facts for the live root; the root's recorded facts (or unknown ones) otherwise."""
    if root.live:
        return live_facts(environ)
    return root.manifest.facts or HostFacts()


def diagnose(
    root: Root,
    facts: HostFacts,
    options: DoctorOptions | None = None,
    checks: Sequence[str] = (),
) -> list[CheckResult]:
    """Run the selected checks (all when ``checks`` is empty) against one root."""
    return run_checks(Host(root, facts, options), select(checks))
