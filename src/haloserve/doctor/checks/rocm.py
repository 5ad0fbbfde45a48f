"""Software: host ROCm and the HSA override for its version (errata 7), llama.cpp's HIP variables, Vulkan."""

from __future__ import annotations

import json
import re

from haloserve.doctor import fixes
from haloserve.doctor.check import Check
from haloserve.doctor.checks._common import no_amd_gpu
from haloserve.doctor.host import Host
from haloserve.doctor.parse import parse_version
from haloserve.doctor.result import Status, Verdict
from haloserve.doctor.rocm_env import NATIVE_GFX1151, advice, advice_for

SECTION = "Software"
_OVERRIDE = re.compile(r"^\d+\.\d+\.\d+$")


def rocm_version(host: Host) -> tuple[str | None, str | None]:
    """The host ROCm version and where it was found (``/opt/rocm``, else the newest ``/opt/rocm-*``)."""
    text = host.root.text("opt/rocm/.info/version")
    if text:
        return text.splitlines()[0].strip(), "/opt/rocm"
    found = []
    for path in host.root.glob("opt/rocm-*/.info/version"):
        value = host.root.text(path)
        version = parse_version(value)
        if value and version:
            found.append((version, value.splitlines()[0].strip(), "/" + path.split("/.info")[0]))
    if not found:
        return None, None
    _, text, where = max(found)
    return text, where


def judge_override(
    rocm: tuple[int, int, int] | None, override: str | None, strix_halo: bool
) -> tuple[Status, str, str]:
    """Verdict, explanation and fix for ``HSA_OVERRIDE_GFX_VERSION`` given the ROCm version (errata 7)."""
    unset = (
        "unset HSA_OVERRIDE_GFX_VERSION   # and delete it from Dockerfiles, compose files, units, ~/.bashrc"
    )
    if override is not None and not _OVERRIDE.match(override.strip()):
        return (
            Status.WARN,
            f"HSA_OVERRIDE_GFX_VERSION={override!r} is not of the form X.Y.Z; the runtime ignores or "
            "rejects it",
            unset,
        )
    if not strix_halo or rocm is None:
        return Status.OK, "", ""
    row = advice_for("HSA_OVERRIDE_GFX_VERSION", rocm)  # the table halo deploy writes from
    if row is not None and row.value is None:
        if override is None or override.strip() == "11.5.1":
            note = "native gfx1151 kernels, no override needed"
            return Status.OK, note + (" (11.5.1 only restates the native target)" if override else ""), ""
        return Status.WARN, f"HSA_OVERRIDE_GFX_VERSION={override} on this ROCm: {row.why}", unset
    if row is not None:
        if override is not None and override.strip() == row.value:
            return (
                Status.OK,
                "11.0.0 is the known ROCm 6.4.x workaround (gfx1100 kernels); upgrade to ROCm 7 and drop it",
                "",
            )
        return (
            Status.WARN,
            "ROCm 6.4.x lacks gfx1151 kernels in several libraries (HSA_STATUS_ERROR_OUT_OF_RESOURCES): "
            "upgrade to ROCm 7.x, or use the 6.4.x workaround HSA_OVERRIDE_GFX_VERSION=11.0.0",
            f"export HSA_OVERRIDE_GFX_VERSION={row.value}   # ROCm 6.4.x only; better: install ROCm 7.x and "
            "no override",
        )
    return (
        Status.WARN,
        "this ROCm predates Strix Halo support: install ROCm 7.x",
        "# see https://rocm.docs.amd.com for ROCm 7.x packages for your distribution",
    )


def check_rocm(host: Host) -> Verdict:
    """Host ROCm version and ``HSA_OVERRIDE_GFX_VERSION`` advice for it."""
    skip = no_amd_gpu(host)
    if skip:
        return skip
    text, where = rocm_version(host)
    override = host.facts.getenv("HSA_OVERRIDE_GFX_VERSION")
    halo = host.strix_halo is not None
    expected = (
        "ROCm 7.x with no HSA_OVERRIDE_GFX_VERSION (ROCm 6.4.x: 11.0.0), or no host ROCm with containers"
    )
    why = (
        "gfx1151 kernels arrived late: ROCm 6.4.x needed the gfx1100 override, ROCm 7.x runs gfx1151 "
        "natively "
        "and an old override then only hurts."
    )
    env_note = () if host.facts.env_known else ("The environment was not captured for this root.",)
    shown_override = (
        f"HSA_OVERRIDE_GFX_VERSION={override}" if override is not None else "no HSA_OVERRIDE_GFX_VERSION"
    )
    if text is None:
        status, message, fix = judge_override(None, override, halo)
        observed = f"no host ROCm in /opt/rocm ({shown_override})"
        notes = (
            "Not needed when serving from a ROCm container or with llama.cpp's Vulkan backend; containers "
            "bring their own ROCm, so apply the override advice to the image's ROCm version.",
            *env_note,
        )
        return Verdict(status, observed + (f": {message}" if message else ""), expected, why, fix, notes)
    version = parse_version(text)
    if version is None:
        _, message, fix = judge_override(None, override, halo)
        observed = f"ROCm version at {where} unparseable: {text[:40]!r}" + (f"; {message}" if message else "")
        return Verdict(Status.WARN, observed, expected, why, fix, env_note)
    status, message, fix = judge_override(version, override if host.facts.env_known else None, halo)
    observed = f"ROCm {text} at {where}; {shown_override}" + (f": {message}" if message else "")
    return Verdict(status, observed, expected, why, fix, env_note)


def check_rocm_env(host: Host) -> Verdict:
    """ROCm/HIP variables against :mod:`haloserve.doctor.rocm_env`'s table (the one ``halo deploy`` uses)."""
    skip = no_amd_gpu(host)
    if skip:
        return skip
    text, _ = rocm_version(host)
    version = (parse_version(text) if text else None) or NATIVE_GFX1151  # no host ROCm: containers' 7.x
    rows = advice(version)
    wanted = ", ".join(f"{r.name}={r.value}" for r in rows if r.value is not None)
    unset = ", ".join(r.name for r in rows if r.value is None)
    expected = f"as halo deploy writes for ROCm {'.'.join(map(str, version))}: {wanted}; unset: {unset}"
    if not host.facts.env_known:
        return Verdict(Status.SKIP, "environment not captured for this root", expected)
    notes: list[str] = []
    status = Status.OK
    fix = ""
    why = ""
    unified = host.facts.getenv("GGML_CUDA_ENABLE_UNIFIED_MEMORY")
    xnack = host.facts.getenv("HSA_XNACK")
    shown = [
        f"GGML_CUDA_ENABLE_UNIFIED_MEMORY={unified}"
        if unified is not None
        else "GGML_CUDA_ENABLE_UNIFIED_MEMORY unset",
        f"HSA_XNACK={xnack}" if xnack is not None else "HSA_XNACK unset",
    ]
    if unified is not None and unified.strip().lower() in ("0", "false", "off", "no", ""):
        status = Status.WARN
        why = "llama.cpp only checks that GGML_CUDA_ENABLE_UNIFIED_MEMORY exists: =0 turns managed memory on."
        fix = "unset GGML_CUDA_ENABLE_UNIFIED_MEMORY"
    elif unified is not None:
        notes.append(
            "GGML_CUDA_ENABLE_UNIFIED_MEMORY makes llama.cpp's HIP backend allocate with hipMallocManaged "
            "(system "
            "RAM). With ttm.pages_limit raised, plain hipMalloc already reaches GTT; measure both with "
            "your model."
        )
    else:
        notes.append(
            "Optional: GGML_CUDA_ENABLE_UNIFIED_MEMORY=1 lets llama.cpp's HIP backend use managed memory "
            "when "
            "allocations beyond the carve-out fail."
        )
    xnack_row = advice_for("HSA_XNACK", version)
    if xnack is not None and host.strix_halo is not None and xnack_row and xnack_row.value is None:
        notes.append(f"HSA_XNACK has {xnack_row.why} ({xnack_row.source}).")
    return Verdict(status, "; ".join(shown), expected, why, fix, tuple(notes))


def check_vulkan(host: Host) -> Verdict:
    """A Vulkan ICD for Mesa RADV (``radeon_icd*.json``), the driver llama.cpp's Vulkan backend targets."""
    skip = no_amd_gpu(host)
    if skip:
        return skip
    expected = "Mesa RADV ICD (radeon_icd*.json in /usr/share/vulkan/icd.d)"
    why = (
        "llama.cpp's Vulkan backend on RADV is the most robust way to use Strix Halo without ROCm, and "
        "often the "
        "fastest for token generation."
    )
    found: dict[str, list[str]] = {"radv": [], "amdvlk": [], "broken": []}
    for base in ("usr/share/vulkan/icd.d", "etc/vulkan/icd.d"):
        for path in host.root.glob(f"{base}/*.json"):
            name = path.rsplit("/", 1)[-1]
            kind = (
                "radv" if name.startswith("radeon_icd") else "amdvlk" if name.startswith("amd_icd") else None
            )
            if kind is None:
                continue
            try:
                data = json.loads(host.root.text(path) or "")
                library = str(data["ICD"]["library_path"])
                api = str(data["ICD"].get("api_version", "?"))
            except (ValueError, KeyError, TypeError):
                found["broken"].append(f"/{path}")
                continue
            found[kind].append(f"/{path} ({library}, Vulkan {api})")
    notes: list[str] = []
    broken_radv = [p for p in found["broken"] if "radeon_icd" in p]
    if found["broken"]:
        notes.append("Unreadable ICD manifests: " + ", ".join(found["broken"]))
    if found["radv"]:
        if found["amdvlk"]:
            notes.append(
                "AMDVLK is installed too; if llama.cpp picks it, force RADV with "
                "VK_DRIVER_FILES=/usr/share/vulkan/icd.d/radeon_icd.x86_64.json"
            )
        return Verdict(Status.OK, "RADV: " + "; ".join(found["radv"]), expected, notes=tuple(notes))
    install = fixes.install(host.distro, "radv")
    if found["amdvlk"]:
        return Verdict(
            Status.WARN,
            "only AMDVLK: " + "; ".join(found["amdvlk"]),
            expected,
            why + " AMD has discontinued AMDVLK in favour of RADV.",
            install,
            tuple(notes),
        )
    if broken_radv:
        observed = "RADV ICD manifest unreadable: " + ", ".join(broken_radv)
        return Verdict(
            Status.WARN, observed, expected, why, install.replace("install", "reinstall", 1), tuple(notes)
        )
    return Verdict(Status.WARN, "no RADV Vulkan driver installed", expected, why, install, tuple(notes))


CHECKS = (
    Check("rocm", "ROCm and HSA override", SECTION, check_rocm),
    Check("rocm.env", "ROCm environment", SECTION, check_rocm_env),
    Check("vulkan", "Vulkan (RADV)", SECTION, check_vulkan),
)
