"""Settings for ``halo doctor``."""

from __future__ import annotations

from haloserve.config.base import HaloSettings, option


class DoctorSettings(HaloSettings):
    """Where to look (the live host or a captured tree), which checks to run, and for whom."""

    root: str = option(
        "/",
        "Check this directory or snapshot archive (.tar.gz) instead of the live host; paths are read "
        "under it (ROOT/proc, ROOT/sys, ROOT/dev, ROOT/etc/group, ROOT/opt/rocm).",
        metavar="DIR|ARCHIVE",
    )
    check: list[str] = option(
        default_factory=list,
        description="Run only this check, or every check of a group such as rdma (repeatable; see --list).",
        metavar="ID",
    )
    models_dir: str | None = option(
        None,
        "Where GGUF models live: its free space is checked and its models sized (default: your home "
        "directory).",
        metavar="DIR",
    )
    user: str | None = option(
        None,
        "Check this user's groups instead of the user running doctor (needed under --root without facts).",
        metavar="NAME",
    )
