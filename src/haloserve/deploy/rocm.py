"""ROCm settings that depend on the ROCm version (errata 7) and on the backend.

The environment variables come from the one table in :mod:`haloserve.doctor.rocm_env`, which
``halo doctor`` judges hosts against too. ROCm 6.4.x lacked gfx1151 kernels in several libraries, so the
seeds set ``HSA_OVERRIDE_GFX_VERSION=11.0.0`` (run gfx1100 kernels); ROCm 7.x ships native gfx1151
kernels and the override then only hurts, so it is written only for 6.4.x, and the GPU targets the images
are built for follow the same rule (with the override the device reports gfx1100, so the kernels must be
gfx1100). Seed 001's ``HSA_XNACK=1`` is not written: gfx1151 has no XNACK.
"""

from __future__ import annotations

from dataclasses import dataclass

from haloserve.doctor.rocm_env import FIRST_GFX1151, NATIVE_GFX1151, advice, parse_rocm

GFX = "gfx1151"  # Strix Halo's Radeon 8060S (errata 3: gfx1150 is a different chip)


@dataclass(frozen=True)
class EnvVar:
    """An environment variable with the reason it is set (rendered as a comment)."""

    name: str
    value: str
    why: str


def too_old(version: str) -> str | None:
    """Why this ROCm cannot drive a Strix Halo GPU, or ``None``."""
    if parse_rocm(version) < FIRST_GFX1151:
        return f"ROCm {version} predates gfx1151 support; use 7.x (or 6.4.x with the gfx1100 override)"
    return None


def needs_override(version: str) -> bool:
    """True for ROCm 6.4.x, which needs ``HSA_OVERRIDE_GFX_VERSION=11.0.0``."""
    return parse_rocm(version) < NATIVE_GFX1151


def gpu_targets(version: str) -> str:
    """The offload targets to compile for: gfx1151, or gfx1100 under the 6.4.x override."""
    return "gfx1100" if needs_override(version) else GFX


def rocm_env(version: str, llama: bool = True) -> list[EnvVar]:
    """The ROCm runtime variables of every GPU service: the table's rows that set a value for this
    version; ``llama=False`` leaves out llama.cpp's own variable (vLLM images and services)."""
    return [EnvVar(r.name, r.value, r.why) for r in advice(parse_rocm(version), llama) if r.value is not None]


def rocm_image(version: str) -> str:
    """AMD's ROCm development image with every library (rocBLAS, hipBLASLt, rocWMMA)."""
    return f"rocm/dev-ubuntu-24.04:{version}-complete"
