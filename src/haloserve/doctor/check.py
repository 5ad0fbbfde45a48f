"""A registered check: its stable id, title, report section and the function that judges a host."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from haloserve.doctor.host import Host
from haloserve.doctor.result import CheckResult, Status, Verdict

SECTIONS: tuple[str, ...] = (
    "Kernel and driver",
    "GPU access",
    "Memory",
    "Software",
    "RDMA",
    "RPC workers",
    "Models",
)


@dataclass(frozen=True)
class Check:
    """A registered check: stable id, title, report section and the function that judges."""

    id: str
    title: str
    section: str
    run: Callable[[Host], Verdict]

    def __call__(self, host: Host) -> CheckResult:
        """Run the check; a crash becomes a ``warn`` naming the bug instead of a traceback."""
        try:
            verdict = self.run(host)
        except Exception as exc:  # a doctor bug must not hide the other results
            if os.environ.get("HALO_DEBUG"):
                raise
            verdict = Verdict(
                Status.WARN,
                f"doctor could not evaluate this check: {type(exc).__name__}: {exc}",
                why="This is a bug in halo doctor; the other checks are unaffected.",
                fix="halo doctor --snapshot doctor.tar.gz   # attach the file to a bug report",
            )
        return CheckResult.of(self.id, self.title, verdict)
