"""Settings of ``halo rpc-worker``: one node's ggml backend exposed to ``halo serve --rpc`` elsewhere."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import ClassVar

from pydantic import field_validator

from haloserve.config.base import HaloSettings, option


def default_worker_threads() -> int:
    """Half the CPUs this process may use, as llama.cpp's rpc-server defaults to."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // 2)


class RpcWorkerSettings(HaloSettings):
    """Where the worker listens, what it exposes, and whether a llama.cpp binary serves instead."""

    # HALO_HOST/HALO_PORT set for `halo serve` in the same shell must not open this unauthenticated port
    env_prefix: ClassVar[str] = "HALO_RPC_WORKER_"

    host: str = option(
        "127.0.0.1",
        "IPv4 address to listen on. Anything but loopback exposes an unauthenticated protocol: use the "
        "address of a private RDMA/RoCE link, or firewall the port to the main node (docs/security.md).",
        metavar="ADDR",
    )
    port: int = option(50052, "TCP port to listen on.", ge=1, le=65535)
    cache: Path | None = option(
        None,
        "Directory for ggml's local tensor cache (created if missing): a client reloading a model it "
        "sent before sends hashes instead of the large tensors.",
        metavar="DIR",
    )
    threads: int = option(
        default_factory=default_worker_threads,
        description="CPU threads for the CPU device (default: half the CPUs, as rpc-server).",
        ge=1,
    )
    device: list[str] = option(
        default_factory=list,
        description="Expose these ggml devices (comma-separated or repeated, e.g. ROCm0; default: every "
        "GPU, else the CPU, as rpc-server).",
        metavar="NAME[,NAME]",
    )
    binary: str | None = option(
        None,
        "Supervise this ggml-rpc-server/rpc-server binary (a path or a name on PATH) instead of serving "
        "in-process; flags are passed on, signals forwarded, its exit code returned.",
        metavar="PATH",
    )

    @field_validator("host")
    @classmethod
    def _ipv4(cls, value: str) -> str:
        # ggml's RPC server binds with inet_addr(): an IPv4 literal, never a name or IPv6
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise ValueError(
                "ggml's RPC server listens on an IPv4 address only (e.g. 127.0.0.1, 10.0.0.2 or 0.0.0.0)"
            ) from None
        return value

    @field_validator("device")
    @classmethod
    def _split(cls, value: list[str]) -> list[str]:
        return [part.strip() for item in value for part in item.split(",") if part.strip()]
