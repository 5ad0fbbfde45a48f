"""What ``halo deploy check`` finds in edited files that no spec renders: added instructions and commands.

``halo deploy render`` leaves a copy of its spec (``spec.yaml``) beside the files; ``check`` renders it
again and compares the structure, not the text, so tuning a value is fine while a new ``RUN`` line, a new
shell command, or a changed security setting of a container (``privileged``, ``pid``, ``cap_add``,
devices, mounts) is reported. Compose invariants that hold for every render are checked without a spec.
"""

from __future__ import annotations

import io
import re
import shlex
from collections import Counter
from typing import Any

SPEC_COPY = "spec.yaml"
# What a container runs and may do on its host; compared with a fresh render (environment by name).
SECURITY_KEYS = (
    "privileged",
    "pid",
    "ipc",
    "cap_add",
    "devices",
    "volumes",
    "network_mode",
    "security_opt",
    "user",
    "userns_mode",
    "cgroup",
    "entrypoint",
    "command",
    "image",
    "sysctls",
)
DEVICES = {"/dev/kfd", "/dev/dri", "/dev/infiniband"}
CAPABILITIES = {"IPC_LOCK"}  # RDMA pins memory
SECURITY_OPTS = {"seccomp=unconfined", "seccomp:unconfined"}
WILDCARDS = {"0.0.0.0", "::", "0:0:0:0:0:0:0:0"}  # every interface
_HOST_ONLY = re.compile(r"^/(?:|var/run/docker\.sock|run/docker\.sock|proc|sys|etc|boot|root)(?::|/?$)")
# A shell assignment whose value cannot run anything: plain, single-quoted, or double-quoted without $ `
_LITERAL = re.compile(r"^(export )?([A-Za-z_][A-Za-z0-9_]*)=('[^']*'|\"[^\"$`\\]*\"|[\w.,:/@%+=-]*)$")


def compose_invariants(services: dict[str, Any]) -> list[str]:
    """Settings no render ever writes: privileged containers, host pid/user namespaces, extra
    capabilities and devices, other security options, mounts of the host's root or Docker socket."""
    return [message for _, message in _invariants(services)]


def _invariants(services: dict[str, Any]) -> list[tuple[str, str]]:
    """``("service: key", message)`` for every broken invariant."""
    out = []
    for name, s in services.items():
        if not isinstance(s, dict):
            continue
        found: list[tuple[str, str]] = []
        if s.get("privileged"):
            found.append(("privileged", "privileged is never rendered (a container with every host device)"))
        for key in ("pid", "userns_mode", "cgroup", "uts"):
            if s.get(key) is not None:
                found.append((key, f"{key}: {s[key]} is never rendered (shares the host's namespace)"))
        extra = [c for c in s.get("cap_add") or [] if str(c) not in CAPABILITIES]
        if extra:
            found.append(("cap_add", f"cap_add {', '.join(map(str, extra))} (only IPC_LOCK is rendered)"))
        for d in s.get("devices") or []:
            if str(d).split(":", 1)[0] not in DEVICES:
                found.append(
                    ("devices", f"device {d} (only /dev/kfd, /dev/dri and /dev/infiniband are rendered)")
                )
        for opt in s.get("security_opt") or []:
            if str(opt) not in SECURITY_OPTS:
                found.append(("security_opt", f"security_opt {opt} (only seccomp=unconfined is rendered)"))
        for v in s.get("volumes") or []:
            source = v.get("source", "") if isinstance(v, dict) else str(v)
            if _HOST_ONLY.match(str(source)):
                found.append(("volumes", f"volume {v} mounts a host system path"))
        if s.get("network_mode") not in (None, "host"):
            found.append(("network_mode", f"network_mode {s['network_mode']} is never rendered"))
        wild = _rpc_worker_wildcard(s.get("command"))
        if wild:
            found.append(
                (
                    "command",
                    f"halo rpc-worker --host {wild} listens on every interface; the RPC protocol has no "
                    "authentication: bind the node's private address (rdma.ip in the spec)",
                )
            )
        out += [(f"{name}: {key}", f"{name}: {message}") for key, message in found]
    return out


def _rpc_worker_wildcard(command: Any) -> str | None:
    """The wildcard address a ``halo rpc-worker`` command binds (``None``: none, or not a worker)."""
    if not isinstance(command, list) or "rpc-worker" not in command:
        return None
    words = [str(w) for w in command]
    for i, word in enumerate(words):
        host = words[i + 1] if word == "--host" and i + 1 < len(words) else word.partition("=")[2]
        if (word == "--host" or word.startswith("--host=")) and host.strip("[]") in WILDCARDS:
            return host
    return None


def compose_drift(disk: dict[str, Any], fresh: dict[str, Any]) -> list[str]:
    """Services and security settings of ``disk`` that the fresh render of the spec does not have."""
    out = []
    theirs = fresh.get("services") or {}
    flagged = {key for key, _ in _invariants(disk.get("services") or {})}  # said once, by the invariants
    for name, s in (disk.get("services") or {}).items():
        if name not in theirs:
            out.append(f"{name}: a service spec.yaml does not render")
            continue
        for key in (k for k in SECURITY_KEYS if f"{name}: {k}" not in flagged):
            mine, want = (s or {}).get(key), theirs[name].get(key)
            if mine != want:
                out.append(f"{name}: {key} is {mine!r}, spec.yaml renders {want!r}")
        # variables by name: values are the user's to tune, a new one (LD_PRELOAD=...) is not
        added = sorted(
            set(_names((s or {}).get("environment"))) - set(_names(theirs[name].get("environment")))
        )
        if added:
            out.append(f"{name}: environment {', '.join(added)} is not rendered by spec.yaml")
    return out


def _names(env: Any) -> list[str]:
    if isinstance(env, dict):
        return [str(k) for k in env]
    return [str(e).split("=", 1)[0] for e in env or []]


def _instructions(text: str) -> list[str]:
    """Instructions of a Dockerfile; ``ARG``/``ENV`` keep their names only (values are the user's)."""
    from dockerfile_parse import DockerfileParser

    out = []
    for i in DockerfileParser(fileobj=io.BytesIO(text.encode())).structure:
        kind, value = i["instruction"], " ".join(i["value"].split())
        if kind == "COMMENT":
            continue
        if kind in ("ARG", "ENV"):
            try:
                words = shlex.split(value)
            except ValueError:
                words = value.split()
            value = " ".join(sorted(w.split("=", 1)[0] for w in words if "=" in w) or words[:1])
        out.append(f"{kind} {value}")
    return out


def dockerfile_drift(disk: str, fresh: str) -> list[str]:
    """Instructions on disk that the fresh render has not (``ARG``/``ENV`` compared by name)."""
    try:
        extra = Counter(_instructions(disk)) - Counter(_instructions(fresh))
    except ImportError:  # dockerfile-parse is a dev dependency; without it check_dockerfile says so
        return []
    return [f"{line[:120]}: not an instruction spec.yaml renders" for line in extra.elements()]


def _commands(text: str) -> list[str]:
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        out.append(_LITERAL.sub(lambda m: f"{m.group(1) or ''}{m.group(2)}=", line))
    return out


def script_drift(disk: str, fresh: str) -> list[str]:
    """Command lines on disk that the fresh render has not (literal assignments compared by name)."""
    extra = Counter(_commands(disk)) - Counter(_commands(fresh))
    return [f"{line[:120]}: not a line spec.yaml renders" for line in extra.elements()]
