"""Settings of ``halo gateway`` (and the key store path shared with ``halo keys`` / ``halo usage``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from haloserve.config import connections
from haloserve.config.base import HaloSettings, option
from haloserve.errors import ConfigError

Policy = Literal["prefix", "least", "round-robin", "random"]


def default_keys_db() -> Path:
    """``$XDG_DATA_HOME/haloserve/gateway.db`` (``~/.local/share/haloserve/gateway.db``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "haloserve" / "gateway.db"


class BackendSpec(BaseModel):
    """One upstream server: where it is and how much it may take."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="Base URL, e.g. http://10.0.0.2:8080 (a trailing /v1 is ignored).")
    weight: float = Field(default=1.0, gt=0, description="Share of traffic relative to other backends.")
    max_concurrency: int = Field(
        default=0,
        ge=0,
        description="Requests in flight at most (0: learned from the backend, else unlimited).",
    )
    api_key: str | None = Field(
        default=None, description="Key sent upstream; 'ENV:NAME' reads it from an environment variable."
    )
    models: list[str] = Field(
        default_factory=list, description="Models it serves (empty: discovered from /v1/models)."
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Free-form tags shown in /health and /admin/backends (node, zone...).",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if not v.startswith(("http://", "https://")):
            v = "http://" + v
        return v.removesuffix("/v1")

    def resolved_api_key(self) -> str | None:
        """The upstream key, with ``ENV:NAME`` read from the environment."""
        return resolve_secret(self.api_key, f"backend {self.url}")


def parse_backend(text: str) -> dict[str, Any]:
    """``URL[,weight=2][,max_concurrency=8][,api_key=ENV:NAME][,models=a|b]`` -> backend fields."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or "=" in parts[0].split("://")[-1].split("/")[0]:
        raise ConfigError(
            f"--backend {text!r}: expected URL[,weight=N,max_concurrency=N,api_key=..,models=a|b]"
        )
    out: dict[str, Any] = {"url": parts[0]}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in BackendSpec.model_fields or key in ("url", "labels"):
            raise ConfigError(f"--backend {text!r}: unknown option {part!r}")
        out[key] = [m for m in value.split("|") if m] if key == "models" else value
    return out


def _rejoin(items: list[Any]) -> list[Any]:
    """Environment values are split on commas: glue ``key=value`` pieces back onto their URL."""
    out: list[Any] = []
    for item in items:
        if isinstance(item, str) and out and isinstance(out[-1], str) and "=" in item and "://" not in item:
            out[-1] = out[-1] + "," + item
        else:
            out.append(item)
    return out


class GatewaySettings(HaloSettings):
    """Everything ``halo gateway`` can be told; each field is a flag, a YAML key and a HALO_* variable."""

    host: str = option("127.0.0.1", "Address to bind.")
    port: int = option(8090, "Port to listen on.", ge=0, le=65535)
    backends: list[BackendSpec] = option(
        default_factory=list,
        description="Backend URL[,weight=N,max_concurrency=N,api_key=ENV:NAME,models=a|b] (repeatable).",
        aliases=("--backend",),
        metavar="URL[,OPT=V]",
    )
    backends_file: Path | None = option(
        None,
        'JSON file {"backends": [{"url": ..., "models"?, "weight"?, "labels"?}]} of more backends, kept'
        " current by another program (halo cluster): re-read within a second of a change.",
        metavar="PATH",
    )
    policy: Policy = option("prefix", "Balancing policy.")
    keys_db: Path = option(
        default_factory=default_keys_db, description="SQLite file of API keys and usage.", metavar="PATH"
    )
    require_keys: bool = option(False, "Reject requests without a valid key from the key store.")
    queue_size: int = option(256, "Requests per model that may wait when every backend is full.", ge=0)
    queue_timeout: float = option(30.0, "Seconds a request may wait in the queue before 429.", gt=0)
    health_interval: float = option(5.0, "Seconds between active /health probes of each backend.", gt=0)
    health_timeout: float = option(2.0, "Seconds a /health probe may take.", gt=0)
    eject_failures: int = option(
        3,
        "Consecutive failures (connection errors, timeouts, 502-504) that open a backend's circuit.",
        ge=1,
    )
    eject_time: float = option(
        10.0, "Seconds a backend stays ejected the first time (doubles each time).", gt=0
    )
    slow_start: float = option(
        10.0, "Seconds over which a returning backend ramps up to its full weight.", ge=0
    )
    retries: int = option(
        2, "Extra attempts on other backends when a request fails before its first byte.", ge=0
    )
    prefix_chunk: int = option(256, "prefix policy: characters per hashed prompt chunk.", ge=16)
    balance_threshold: int = option(
        2, "prefix policy: in-flight lead over the least busy backend that overrides the cache choice.", ge=0
    )
    session_header: str = option(
        "x-session-id", "Header whose value pins a session to one backend (also the 'user' field)."
    )
    max_body_bytes: int = option(8 << 20, "Largest accepted request body in bytes (413 beyond).", ge=1024)
    connect_timeout: float = option(5.0, "Seconds to connect to a backend.", gt=0)
    backend_ca: Path | None = option(
        None,
        "PEM file of certificate authorities trusted for https:// backends, besides the system's"
        " (read at start).",
        metavar="FILE",
    )
    request_timeout: float = option(600.0, "Seconds a backend may take for a whole response.", gt=0)
    # Bounds on what one backend response may make the gateway hold (see docs/security.md, "Gateway
    # buffers"): past one, the request ends with a clean error instead of growing without limit.
    max_backend_event_bytes: int = option(
        1 << 20,
        "Longest SSE event accepted from a backend, in bytes (beyond: 502, or one error event once the"
        " stream started).",
        ge=1024,
    )
    max_backend_head_bytes: int = option(
        64 << 10,
        "Largest backend response head (status line and headers), or trailer, in bytes (502 beyond).",
        ge=1024,
    )
    max_backend_body_bytes: int = option(
        256 << 20, "Largest non-streamed backend response body, in bytes (502 beyond).", ge=1024
    )
    # Connection limits: request head size, timeouts and the connection cap (docs/security.md)
    max_header_bytes: int = connections.MAX_HEADER_BYTES
    max_header_line_bytes: int = connections.MAX_HEADER_LINE_BYTES
    header_timeout: float = connections.HEADER_TIMEOUT
    body_timeout: float = connections.BODY_TIMEOUT
    keepalive_timeout: float = option(
        15.0, "Seconds an idle keep-alive connection stays open between requests.", gt=0
    )
    max_connections: int = option(
        0,
        "Open client connections per worker at most (0: sized below the descriptor limit at two descriptors"
        " a connection, at most 4096). At the cap the oldest idle connection is closed; when none is idle"
        " a new one gets 503.",
        ge=0,
    )
    shutdown_timeout: float = option(30.0, "Seconds in-flight requests get to finish on SIGTERM.", ge=0)
    workers: int = option(1, "Worker processes sharing the port (SO_REUSEPORT).", ge=1, le=64)
    access_log: bool = option(True, "One JSON line per request on stderr (never prompts or keys).")
    log_level: Literal["debug", "info", "warning", "error"] = option("info", "Log verbosity.")
    metrics: bool = option(True, "Serve Prometheus metrics at /metrics.")
    metrics_auth: bool = option(
        True, "With --require-keys, /metrics needs a valid key too (--no-metrics-auth: open to any scraper)."
    )
    admin_key: str | None = option(
        None,
        "Key of the admin API under /admin/ (a literal or ENV:NAME); unset: the admin API answers 404.",
        secret=True,
        metavar="KEY",
    )
    ui: bool = option(True, "Serve the web UI at /ui (static pages calling this API; --no-ui: off).")
    reserve_tokens: int = option(
        1024,
        "Completion tokens held against a key's tokens/minute quota while a request that sets no"
        " max_tokens runs (settled to the real count when it ends).",
        ge=1,
    )

    @field_validator("backends", mode="before")
    @classmethod
    def _backends(cls, v: Any) -> Any:
        if isinstance(v, (str, dict)):
            v = [v]
        if not isinstance(v, list):
            return v
        return [parse_backend(item) if isinstance(item, str) else item for item in _rejoin(v)]

    @field_validator("keys_db", "backend_ca", "backends_file", mode="before")
    @classmethod
    def _expand(cls, v: Any) -> Any:
        return Path(v).expanduser() if isinstance(v, str) else v


def resolve_secret(value: str | None, what: str) -> str | None:
    """A key given as a literal or as ``ENV:NAME`` (read from the environment; unset is an error)."""
    if value and value.startswith("ENV:"):
        name = value[4:]
        got = os.environ.get(name)
        if not got:
            raise ConfigError(f"{what}: environment variable {name} is not set")
        return got
    return value or None


class KeysSettings(HaloSettings):
    """``halo keys`` and ``halo usage``: where the store is."""

    keys_db: Path = option(
        default_factory=default_keys_db, description="SQLite file of API keys and usage.", metavar="PATH"
    )
