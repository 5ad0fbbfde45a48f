"""Small helpers shared by the check modules."""

from __future__ import annotations

from haloserve.doctor.host import Host
from haloserve.doctor.result import Status, Verdict
from haloserve.units import GiB


def gib(n: int | float | None) -> str:
    """``12.34 GiB`` (or ``?`` when unknown)."""
    return "?" if n is None else f"{n / GiB:.1f} GiB"


def no_amd_gpu(host: Host) -> Verdict | None:
    """A ``skip`` verdict when the root has no AMD GPU at all, else ``None``."""
    if host.amd_gpu_present:
        return None
    return Verdict(Status.SKIP, "no AMD GPU on this host (see the gpu check)")


def no_apu(host: Host) -> Verdict | None:
    """A ``skip`` verdict when there is no integrated AMD GPU (carve-out and GTT sizing do not apply)."""
    if host.apu is not None:
        return None
    if not host.amd_gpu_present:
        return Verdict(Status.SKIP, "no AMD GPU on this host (see the gpu check)")
    return Verdict(Status.SKIP, "no integrated AMD GPU found: carve-out and GTT sizing apply to APUs only")
