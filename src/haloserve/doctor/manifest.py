"""``halo-doctor.json``: what a captured tree cannot hold as plain files.

A snapshot (or a fixture tree) keeps at its top a ``halo-doctor.json`` with the process facts, the
files that could not be read and why, the results of access checks and disk usage, and ``nodes``:
paths whose type, mode or owner a plain file tree cannot express (``/dev/kfd`` is a character device
owned by ``render``; a 60 GB GGUF is recorded by its size only). Paths are root-relative, without a
leading slash, exactly as doctor asked for them.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator

from haloserve.doctor.facts import HostFacts
from haloserve.errors import ConfigError

MANIFEST_NAME = "halo-doctor.json"
FORMAT = 1

Kind = Literal["file", "dir", "char", "block", "fifo", "socket", "other"]


class Node(BaseModel):
    """What ``stat`` says of one path: its kind, size, permission bits, owner and device number."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Kind
    size: int = 0
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    rdev: int = 0

    @field_validator("mode", mode="before")
    @classmethod
    def _octal(cls, value: Any) -> Any:
        if isinstance(value, str):
            return int(value, 8)
        return value

    @field_serializer("mode")
    def _dump_mode(self, value: int) -> str:
        return f"{value:04o}"


class DiskUsage(BaseModel):
    """Total and free bytes of the filesystem holding a path."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    total: int = Field(ge=0)
    free: int = Field(ge=0)


class Manifest(BaseModel):
    """The contents of ``halo-doctor.json``."""

    model_config = ConfigDict(extra="forbid")

    format: int = FORMAT
    haloserve: str | None = None
    created: str | None = None
    source: str | None = None
    facts: HostFacts | None = None
    models_dir: str | None = None
    nodes: dict[str, Node] = Field(default_factory=dict)
    unreadable: dict[str, str] = Field(default_factory=dict)
    access: dict[str, bool] = Field(default_factory=dict)
    disk: dict[str, DiskUsage] = Field(default_factory=dict)

    @field_validator("nodes", "unreadable", "access", "disk", mode="before")
    @classmethod
    def _normalise_keys(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {norm(str(k)): v for k, v in value.items()}
        return value

    def dumps(self) -> str:
        """Indented JSON with sorted keys, so two snapshots of one host compare equal."""
        return json.dumps(self.model_dump(mode="json", exclude_none=True), indent=2, sort_keys=True) + "\n"


def norm(path: str) -> str:
    """A root-relative path: no leading slash, no ``.`` or empty parts, ``..`` clamped at the root."""
    out: list[str] = []
    for part in str(path).split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out:
                out.pop()
            continue
        out.append(part)
    return "/".join(out)


def parse_manifest(data: bytes, where: str) -> Manifest:
    """Parse ``halo-doctor.json``; a broken one is a :class:`ConfigError` naming ``where``."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where}: {MANIFEST_NAME} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {MANIFEST_NAME} must hold a JSON object")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        raise ConfigError(f"{where}: {MANIFEST_NAME}: {loc}: {err['msg']}") from None
    if manifest.format > FORMAT:
        raise ConfigError(
            f"{where}: {MANIFEST_NAME} has format {manifest.format}; this halo understands up to {FORMAT}"
        )
    return manifest
