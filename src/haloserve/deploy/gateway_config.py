"""The ``gateway.yaml`` that ``halo gateway --config`` reads: the agreed contract, in one place.

Top-level keys: host, port, policy (prefix|least|round-robin|random), keys_db, require_keys, queue_size,
queue_timeout, health_interval, health_timeout, and ``backends: [{url, weight, max_concurrency, api_key,
models}]``. Change the shape here and every rendered file follows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from haloserve.deploy.spec import Gateway

CONFIG_PATH = "/etc/halo/gateway.yaml"
KEYS = (
    "host",
    "port",
    "policy",
    "keys_db",
    "require_keys",
    "queue_size",
    "queue_timeout",
    "health_interval",
    "health_timeout",
    "backends",
)
BACKEND_KEYS = ("url", "weight", "max_concurrency", "api_key", "models")
NOTES = {
    "host": "address to bind inside the container",
    "port": "port clients call (OpenAI API under /v1)",
    "policy": "prefix: same prompt prefix -> same backend (reuses its KV cache); least; round-robin; random",
    "keys_db": "SQLite file with API keys and usage",
    "require_keys": "reject requests without a valid key",
    "queue_size": "requests that may wait for a free backend; more get 429",
    "queue_timeout": "seconds a request may wait in the queue",
    "health_interval": "seconds between backend health probes",
    "health_timeout": "seconds one probe may take",
    "backends": "one entry per engine replica",
}


@dataclass(frozen=True)
class Backend:
    """One engine replica the gateway forwards to."""

    url: str
    weight: int
    max_concurrency: int
    models: tuple[str, ...]
    api_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The backend entry of ``gateway.yaml``."""
        return {
            "url": self.url,
            "weight": self.weight,
            "max_concurrency": self.max_concurrency,
            "api_key": self.api_key,
            "models": list(self.models),
        }


def gateway_config(gateway: Gateway, backends: list[Backend]) -> dict[str, Any]:
    """The whole ``gateway.yaml`` as plain data, keys in contract order."""
    return {
        "host": "0.0.0.0",
        "port": gateway.port,
        "policy": gateway.policy,
        "keys_db": gateway.keys_db,
        "require_keys": gateway.require_keys,
        "queue_size": gateway.queue_size,
        "queue_timeout": gateway.queue_timeout,
        "health_interval": gateway.health_interval,
        "health_timeout": gateway.health_timeout,
        "backends": [b.to_dict() for b in backends],
    }


def contract_problems(data: object) -> list[str]:
    """What in a loaded ``gateway.yaml`` breaks the contract (empty when it is fine)."""
    if not isinstance(data, dict):
        return ["not a mapping"]
    out = [f"missing key {k}" for k in KEYS if k not in data]
    out += [f"unknown key {k}" for k in data if k not in KEYS]
    if data.get("policy") not in ("prefix", "least", "round-robin", "random"):
        out.append(f"policy {data.get('policy')!r} is not prefix, least, round-robin or random")
    backends = data.get("backends")
    if not isinstance(backends, list) or not backends:
        out.append("backends must be a non-empty list")
        return out
    for i, b in enumerate(backends):
        if not isinstance(b, dict) or set(b) != set(BACKEND_KEYS):
            out.append(f"backends[{i}] must have exactly the keys {', '.join(BACKEND_KEYS)}")
        elif not str(b["url"]).startswith(("http://", "https://")):
            out.append(f"backends[{i}].url is not an http(s) URL")
    return out
