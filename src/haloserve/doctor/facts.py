"""Process facts that do not live in files: who runs doctor, its groups, ``ulimit -l`` and a few variables.

They are gathered once (:func:`live_facts`) so that checks stay pure functions of a root and these
facts; a fixture tree or a snapshot supplies them in its ``halo-doctor.json``. Only the environment
variables doctor judges are kept (:data:`ENV_KEYS`), never a full environment dump.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, field_serializer, field_validator

UNLIMITED = -1
"""``ulimit -l`` value meaning "unlimited" (``RLIM_INFINITY``)."""

ENV_KEYS: tuple[str, ...] = (
    "HSA_OVERRIDE_GFX_VERSION",
    "HSA_XNACK",
    "GGML_CUDA_ENABLE_UNIFIED_MEMORY",
    "ROCBLAS_USE_HIPBLASLT",
    "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "LLAMA_ARG_MMAP",
    "LLAMA_ARG_NO_MMAP",
    "NCCL_IB_GID_INDEX",
    "NCCL_IB_HCA",
    "NCCL_SOCKET_IFNAME",
    "NCCL_IB_DISABLE",
    "GLOO_SOCKET_IFNAME",
    "PATH",
)
"""The environment variables doctor reads; nothing else is captured."""


def _limit_in(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value.strip().lower() in ("unlimited", "infinity", "-1"):
            return UNLIMITED
        return int(value)
    return int(value)


class HostFacts(BaseModel):
    """The facts about the running process that checks need; ``None`` means "not known for this root"."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    user: str | None = None
    uid: int | None = None
    groups: tuple[str, ...] | None = None
    memlock_soft: int | None = None
    memlock_hard: int | None = None
    env: dict[str, str] | None = None

    @field_validator("memlock_soft", "memlock_hard", mode="before")
    @classmethod
    def _parse_limit(cls, value: Any) -> int | None:
        return _limit_in(value)

    @field_serializer("memlock_soft", "memlock_hard")
    def _dump_limit(self, value: int | None) -> int | str | None:
        return "unlimited" if value == UNLIMITED else value

    def getenv(self, name: str) -> str | None:
        """The value of one captured variable (``None`` when unset or the environment is unknown)."""
        return None if self.env is None else self.env.get(name)

    @property
    def env_known(self) -> bool:
        """True when the environment was captured (live run, or facts in the root)."""
        return self.env is not None


def _rlimit(value: int) -> int:
    import resource

    return UNLIMITED if value == resource.RLIM_INFINITY else int(value)


def live_facts(environ: Mapping[str, str] | None = None) -> HostFacts:
    """Facts of this process: user, uid, group names, ``ulimit -l`` and the variables in :data:`ENV_KEYS`."""
    import grp
    import pwd
    import resource

    environ = os.environ if environ is None else environ
    uid = os.getuid()
    try:
        user: str | None = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = environ.get("USER")
    names: list[str] = []
    for gid in sorted({os.getgid(), *os.getgroups()}):
        try:
            names.append(grp.getgrgid(gid).gr_name)
        except KeyError:
            names.append(str(gid))
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return HostFacts(
        user=user,
        uid=uid,
        groups=tuple(names),
        memlock_soft=_rlimit(soft),
        memlock_hard=_rlimit(hard),
        env={k: environ[k] for k in ENV_KEYS if k in environ},
    )
