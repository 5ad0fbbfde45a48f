"""The checks, one module per group; each module lists its checks in ``CHECKS``."""

from __future__ import annotations

from haloserve.doctor.check import Check
from haloserve.doctor.checks import container, gpu, kernel, memory, models, rdma, rocm, rpc

ALL_CHECKS: tuple[Check, ...] = (
    *kernel.CHECKS,
    *gpu.CHECKS,
    *memory.CHECKS,
    *rocm.CHECKS,
    *container.CHECKS,
    *rdma.CHECKS,
    *rpc.CHECKS,
    *models.CHECKS,
)
"""Every check in report order."""
