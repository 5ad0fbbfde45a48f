"""The one table of ROCm environment advice for Strix Halo (gfx1151), by ROCm version.

``halo deploy`` writes the variables this table sets into every GPU service, and ``halo doctor`` judges
the host's environment against the same rows, so the two never disagree. Sources, per row:

* ``HSA_OVERRIDE_GFX_VERSION``: ROCm 6.4.x lacked gfx1151 kernels in several libraries and ran the
  gfx1100 ones under ``11.0.0`` (seed 001); ROCm 7.x ships gfx1151 kernels (AMD's ROCm 7 compatibility
  matrix lists gfx1151), where an override loads other kernels (errata 7).
* ``HSA_XNACK``: XNACK (page-fault replay) is a target feature of GFX8/GFX9 and gfx1010-gfx1013 only;
  LLVM's AMDGPUUsage processor table lists gfx1151 with ``cumode`` and ``wavefrontsize64`` and no
  ``xnack``, so the variable has no effect there. Seed 001's ``HSA_XNACK=1`` is not written.
* ``ROCBLAS_USE_HIPBLASLT``, ``GPU_MAX_HW_QUEUES``, ``GGML_CUDA_ENABLE_UNIFIED_MEMORY``: seed 001's
  container settings (hipBLASLt GEMMs; fewer hardware queues for one inference process; llama.cpp's
  managed-memory switch, which llama.cpp reads by presence, so ``=0`` also turns it on).
"""

from __future__ import annotations

from dataclasses import dataclass

Version = tuple[int, int, int]

FIRST_GFX1151: Version = (6, 4, 0)  # the first ROCm that drives gfx1151 (with the gfx1100 override)
NATIVE_GFX1151: Version = (7, 0, 0)  # ROCm 7.x ships gfx1151 kernels
ANY_VERSION: tuple[Version, Version] = ((0, 0, 0), (999, 0, 0))


@dataclass(frozen=True)
class RocmEnv:
    """One piece of advice: ``name`` should be ``value`` (``None``: left unset) on ROCm in ``versions``
    (``[low, high)``); ``llama`` rows apply to llama.cpp only."""

    name: str
    value: str | None
    versions: tuple[Version, Version]
    why: str
    source: str
    llama: bool = False

    def applies(self, version: Version) -> bool:
        """True when this row is the advice for ROCm ``version``."""
        low, high = self.versions
        return low <= version < high


TABLE: tuple[RocmEnv, ...] = (
    RocmEnv(
        "HSA_OVERRIDE_GFX_VERSION",
        "11.0.0",
        (FIRST_GFX1151, NATIVE_GFX1151),
        "ROCm 6.4.x only: run gfx1100 kernels (without it: HSA_STATUS_ERROR_OUT_OF_RESOURCES); drop it on "
        "ROCm 7.x, which has native gfx1151 kernels",
        "seed 001; errata 7",
    ),
    RocmEnv(
        "HSA_OVERRIDE_GFX_VERSION",
        None,
        (NATIVE_GFX1151, ANY_VERSION[1]),
        "ROCm 7.x has native gfx1151 kernels; an override loads other ones: slower at best, wrong results "
        "or crashes at worst",
        "AMD ROCm 7 compatibility matrix (gfx1151); errata 7",
    ),
    RocmEnv(
        "HSA_XNACK",
        None,
        ANY_VERSION,
        "no effect on gfx1151: XNACK page-fault replay is a GFX8/GFX9 (and gfx1010-gfx1013) target "
        "feature; gfx1151 has none",
        "LLVM AMDGPUUsage, processor table (gfx1151: cumode, wavefrontsize64)",
    ),
    RocmEnv(
        "GGML_CUDA_ENABLE_UNIFIED_MEMORY",
        "1",
        ANY_VERSION,
        "llama.cpp allocates with hipMallocManaged (zero-copy UMA)",
        "seed 001; llama.cpp ggml-cuda.cu",
        llama=True,
    ),
    RocmEnv(
        "ROCBLAS_USE_HIPBLASLT",
        "1",
        ANY_VERSION,
        "hipBLASLt GEMMs: faster prompt processing",
        "seed 001",
    ),
    RocmEnv(
        "GPU_MAX_HW_QUEUES",
        "2",
        ANY_VERSION,
        "fewer hardware queues: less contention for one inference process",
        "seed 001",
    ),
)


def parse_rocm(version: str) -> Version:
    """``"7.0"`` -> ``(7, 0, 0)``; ``"6.4.1-120"`` -> ``(6, 4, 1)``."""
    parts = [int(p) for p in version.split("-", 1)[0].split(".")[:3] if p.isdigit()]
    parts += [0] * (3 - len(parts))
    return parts[0], parts[1], parts[2]


def advice(version: Version, llama: bool = True) -> list[RocmEnv]:
    """The rows for ROCm ``version``, in table order (``llama=False`` drops llama.cpp's own rows)."""
    return [row for row in TABLE if row.applies(version) and (llama or not row.llama)]


def advice_for(name: str, version: Version) -> RocmEnv | None:
    """The row for variable ``name`` on ROCm ``version``, if the table has one."""
    return next((row for row in TABLE if row.name == name and row.applies(version)), None)
