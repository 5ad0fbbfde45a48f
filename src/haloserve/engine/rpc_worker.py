"""What ``halo rpc-worker`` decides before it serves: the devices, the port, the addresses to advertise,
and the command line of a supervised ``ggml-rpc-server``/``rpc-server`` binary."""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import shutil
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from haloserve.config.rpc_worker import RpcWorkerSettings
from haloserve.engine.devices import Device
from haloserve.errors import ConfigError

CVES = ("CVE-2024-42479", "CVE-2024-42478", "CVE-2024-42477")


def exposure_warning(host: str) -> str | None:
    """The warning for a listen address other than loopback (None for loopback)."""
    if ipaddress.IPv4Address(host).is_loopback:
        return None
    return (
        f"listening on {host}: ggml's RPC protocol has no authentication and published flaws allow "
        f"remote code execution and memory disclosure ({', '.join(CVES)}); anyone who reaches this "
        "port owns this process. Keep it on a private RDMA/RoCE link or firewall it to the main node."
    )


def select_devices(available: Sequence[Device], names: Sequence[str]) -> list[Device]:
    """The devices to expose: those named, else every GPU, else the CPU (rpc-server's choice)."""
    if names:
        by_name = {d.name: d for d in available}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            listed = ", ".join(f"{d.name} ({d.description})" for d in available) or "none"
            raise ConfigError(f"--device {unknown[0]}: no such ggml device; this build has: {listed}")
        return [by_name[n] for n in dict.fromkeys(names)]
    chosen = [d for d in available if d.type not in ("cpu", "accel")]
    chosen = chosen or [d for d in available if d.type == "cpu"][:1]
    if not chosen:
        raise ConfigError("ggml lists no device to expose (is llama-cpp-python installed correctly?)")
    return chosen


def check_port(host: str, port: int) -> None:
    """ConfigError when ``host:port`` cannot be listened on (in use, or not this machine's address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ggml binds: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port {port} on {host} is in use (another rpc-worker?): stop it or pick --port"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise ConfigError(f"--host {host}: not an address of this machine") from None
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def local_ipv4_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback (for the ``--rpc`` line of a 0.0.0.0 worker)."""
    out: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            req = struct.pack("256s", name.encode()[:15])
            try:
                raw = fcntl.ioctl(s.fileno(), 0x8915, req)  # SIOCGIFADDR
            except OSError:
                continue  # no IPv4 address on this interface
            addr = socket.inet_ntoa(raw[20:24])
            if not ipaddress.IPv4Address(addr).is_loopback and addr not in out:
                out.append(addr)
    return out


def advertised(host: str) -> list[str]:
    """The addresses a client can reach this worker at."""
    if host != "0.0.0.0":
        return [host]
    return local_ipv4_addresses() or ["127.0.0.1"]


def serve_line(address: str, port: int) -> str:
    """The command that uses this worker from the main node."""
    return f"halo serve --rpc {address}:{port} --model MODEL.gguf"


@dataclass(frozen=True, slots=True)
class BinaryCommand:
    """A supervised rpc-server: its argv, the environment it adds, where its tensor cache is."""

    argv: list[str]
    env: dict[str, str]
    cache_dir: Path | None


def binary_command(settings: RpcWorkerSettings) -> BinaryCommand:
    """Our flags as ggml-rpc-server's (tools/rpc/rpc-server.cpp: -H -p -t -d -c)."""
    assert settings.binary is not None
    given = settings.binary
    path = shutil.which(given) if os.sep not in given else (given if os.access(given, os.X_OK) else None)
    if path is None or not os.path.isfile(path):
        raise ConfigError(f"--binary {given}: no such executable (give ggml-rpc-server or rpc-server)")
    argv = [path, "-H", settings.host, "-p", str(settings.port), "-t", str(settings.threads)]
    if settings.device:
        argv += ["-d", ",".join(settings.device)]
    env: dict[str, str] = {}
    cache = None
    if settings.cache is not None:
        # rpc-server's -c takes no directory: it keeps the cache in $LLAMA_CACHE/rpc
        argv.append("-c")
        env["LLAMA_CACHE"] = str(settings.cache)
        cache = settings.cache / "rpc"
    return BinaryCommand(argv, env, cache)


def prepare_cache(path: Path | None) -> None:
    """Create the tensor cache directory (ConfigError when it cannot be)."""
    if path is None:
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--cache {path}: cannot create it ({exc.strerror})") from None
    if not os.access(path, os.W_OK):
        raise ConfigError(f"--cache {path}: not writable")
