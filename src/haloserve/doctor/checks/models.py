"""Models: free disk where models live, and mmap loading on ROCm UMA (llama.cpp issue 15018)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from haloserve.doctor.check import Check
from haloserve.doctor.checks._common import gib
from haloserve.doctor.host import Host
from haloserve.doctor.result import Status, Verdict
from haloserve.units import GB, GiB

SECTION = "Models"
FREE_FAIL = 1 * GiB  # downloads, logs and caches break
FREE_WARN = 50 * GiB  # less than one large quantised model
MMAP_SLOW = 64 * GB  # llama.cpp issue 15018: ROCm loading crawls past ~64 GB with mmap
_SPLIT = re.compile(r"^(?P<stem>.+)-\d{5}-of-\d{5}\.gguf$")
_FALSE = ("false", "0", "off", "disabled", "no")


@dataclass(frozen=True)
class Model:
    """A GGUF model (split files summed) and its size."""

    name: str
    size: int


def models_dir(host: Host) -> str | None:
    """Where models live (``halo doctor`` fills in the default, see ``doctor.options_for``)."""
    return host.options.models_dir


def find_models(host: Host, directory: str) -> list[Model]:
    """GGUF files in ``directory`` and one level below, split parts summed, largest first."""
    sizes: dict[str, int] = {}
    for pattern in (f"{directory}/*.gguf", f"{directory}/*/*.gguf"):
        for path in host.root.glob(pattern):
            node = host.stat(path)
            if node is None or node.kind != "file":
                continue
            name = path[len(directory.strip("/")) :].lstrip("/")
            m = _SPLIT.match(name)
            key = m.group("stem") if m else name
            sizes[key] = sizes.get(key, 0) + node.size
    return sorted((Model(k, v) for k, v in sizes.items()), key=lambda m: (-m.size, m.name))


def check_models(host: Host) -> Verdict:
    """Free disk where models live."""
    expected = f"at least {FREE_WARN // GiB} GiB free for models"
    directory = models_dir(host)
    if directory is None:
        return Verdict(Status.SKIP, "no models directory known for this root (pass --models-dir)", expected)
    shown = "/" + directory.strip("/")
    node = host.stat(directory)
    if node is None:
        return Verdict(
            Status.WARN,
            f"models directory {shown} does not exist",
            expected,
            "halo serve and downloads need a place for GGUF files.",
            f"mkdir -p {shlex.quote(shown)}",
        )
    usage = host.root.disk_usage(directory)
    models = find_models(host, directory)
    found = ""
    if models:
        biggest = models[0]
        found = f"; {len(models)} GGUF model(s), largest {biggest.name} ({biggest.size / GB:.1f} GB)"
    if usage is None:
        return Verdict(Status.SKIP, f"{shown}: free space not known for this root{found}", expected)
    observed = f"{shown}: {gib(usage.free)} free of {gib(usage.total)}{found}"
    why = (
        "A 70B-class GGUF is 40-75 GB; a full disk also breaks logs and the page cache that makes loads fast."
    )
    if usage.free < FREE_FAIL:
        return Verdict(
            Status.FAIL, observed, expected, why, f"du -sh {shlex.quote(shown)}/* | sort -h | tail"
        )
    if usage.free < FREE_WARN:
        return Verdict(
            Status.WARN,
            observed,
            expected,
            why,
            f"du -sh {shlex.quote(shown)}/* | sort -h | tail   # what to prune",
        )
    return Verdict(Status.OK, observed, expected)


def mmap_disabled(host: Host) -> bool:
    """True when the environment turns llama.cpp's mmap off (``LLAMA_ARG_MMAP=false`` or ``..._NO_MMAP``)."""
    value = host.facts.getenv("LLAMA_ARG_MMAP")
    if value is not None and value.strip().lower() in _FALSE:
        return True
    no_mmap = host.facts.getenv("LLAMA_ARG_NO_MMAP")
    return no_mmap is not None and no_mmap.strip().lower() not in _FALSE


def check_mmap(host: Host) -> Verdict:
    """mmap loading on ROCm UMA crawls past ~64 GB: ``LLAMA_ARG_MMAP=false`` for big models."""
    expected = "LLAMA_ARG_MMAP=false (or --no-mmap) for models over ~64 GB on ROCm"
    apu = host.apu
    if apu is None:
        return Verdict(Status.SKIP, "no integrated AMD GPU: the UMA mmap slowdown does not apply", expected)
    why = (
        "On Strix Halo, ROCm copies mmap-ed weights page by page through a staging buffer; past ~64 GB "
        "loading "
        "takes hours instead of a minute (llama.cpp issue 15018). Vulkan is not affected."
    )
    fix = (
        "export LLAMA_ARG_MMAP=false   # halo serve and llama-server; or pass --no-mmap\n"
        '# compose/Kubernetes: LLAMA_ARG_MMAP: "false"'
    )
    if mmap_disabled(host):
        return Verdict(Status.OK, "mmap disabled in this environment (LLAMA_ARG_MMAP)", expected)
    directory = models_dir(host)
    models = find_models(host, directory) if directory and host.stat(directory) else []
    big = [m for m in models if m.size >= MMAP_SLOW]
    env = "mmap not disabled" if host.facts.env_known else "environment not captured"
    if big:
        names = ", ".join(f"{m.name} ({m.size / GB:.0f} GB)" for m in big[:3])
        return Verdict(Status.WARN, f"{env}, and models over 64 GB are present: {names}", expected, why, fix)
    if models:
        return Verdict(
            Status.OK,
            f"{env}; the models found are all under 64 GB (largest {models[0].size / GB:.1f} GB)",
            expected,
            notes=("Set LLAMA_ARG_MMAP=false before loading anything over ~64 GB with ROCm.",),
        )
    return Verdict(Status.WARN, f"{env}; no models found to size", expected, why, fix)


CHECKS = (
    Check("models", "Models disk", SECTION, check_models),
    Check("models.mmap", "mmap on ROCm UMA", SECTION, check_mmap),
)
