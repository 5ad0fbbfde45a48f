"""Membership: ``ray start`` for this box with its memory as a resource, the head's gateway, and stop.

Everything started here is recorded in ``<state dir>/node.json`` (Ray's process ids, the gateway's
supervisor), so ``halo cluster stop`` ends exactly that and never another Ray on the same machine.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from haloserve.cluster import MEMORY_RESOURCE, NODE_RESOURCE_PREFIX, procs
from haloserve.cluster.memory import NodeMemory
from haloserve.cluster.replica import HOST_ENV, NODE_ENV, STATE_DIR_ENV
from haloserve.errors import ConfigError, HaloError

DEFAULT_RAY_PORT = 6379
RAY_START_TIMEOUT = 180.0


@dataclass
class NodeOptions:
    """What ``halo cluster start`` / ``join`` were told."""

    name: str
    state_dir: Path
    memory: NodeMemory
    num_cpus: int | None = None
    host: str = "127.0.0.1"  # where this node's replicas listen (the gateway must reach it)
    ray_port: int = DEFAULT_RAY_PORT
    address: str | None = None  # join this Ray cluster instead of starting a head
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8090
    gateway: bool = True
    ray_args: list[str] = field(default_factory=list)


def split_address(address: str) -> tuple[str, int]:
    """``host[:port]`` (IPv6 in brackets) -> (host, port); the port defaults to Ray's 6379."""
    text = address.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":") or str(DEFAULT_RAY_PORT)
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, str(DEFAULT_RAY_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{address!r} is not a head address (HOST or HOST:PORT)")
    return host, int(port)


def check_reachable(address: str, timeout: float = 5.0) -> str:
    """``host:port`` of a head that accepts TCP connections; a clear error (never a hang) otherwise."""
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise HaloError(
            f"no Ray head at {host}:{port} ({why} after at most {timeout:g} s): start it there with "
            "`halo cluster start`, or check the address and the firewall"
        ) from None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def ray_command(opts: NodeOptions) -> list[str]:
    """The ``ray start`` command line for this node (runs with this Python, so the same Ray)."""
    resources = {MEMORY_RESOURCE: opts.memory.mib, f"{NODE_RESOURCE_PREFIX}{opts.name}": 1000}
    cmd = [sys.executable, "-c", "from ray.scripts.scripts import main; main()", "start"]
    if opts.address:
        cmd += ["--address", opts.address]
    else:
        cmd += ["--head", "--port", str(opts.ray_port), "--include-dashboard", "false"]
    cmd += ["--resources", json.dumps(resources, separators=(",", ":")), "--disable-usage-stats"]
    if opts.num_cpus is not None:
        cmd += ["--num-cpus", str(opts.num_cpus)]
    return [*cmd, *opts.ray_args]


def start_ray(opts: NodeOptions) -> list[int]:
    """Run ``ray start``; returns the pids of the Ray processes it left running."""
    env = {
        **os.environ,
        STATE_DIR_ENV: str(opts.state_dir),
        HOST_ENV: opts.host,
        NODE_ENV: opts.name,
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    ours = f"{STATE_DIR_ENV}={opts.state_dir}"  # what the processes this ray start begins inherit
    before = procs.ray_pids()
    try:
        out = subprocess.run(
            ray_command(opts), capture_output=True, text=True, env=env, timeout=RAY_START_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        procs.kill_all(procs.ray_pids(ours) - before)
        raise HaloError(
            f"ray start did not finish within {RAY_START_TIMEOUT:g} s (stopped what it began)"
        ) from None
    pids = sorted(procs.ray_pids(ours) - before)
    if out.returncode != 0:
        procs.kill_all(pids)
        lines = [ln for ln in (out.stderr + out.stdout).splitlines() if ln.strip()]
        raise HaloError(f"ray start failed: {lines[-1] if lines else f'exit status {out.returncode}'}")
    return pids


def launch_gateway(opts: NodeOptions, backends_file: Path) -> int:
    """``halo gateway --backends-file`` under :mod:`supervise`, detached from Ray; returns its pid."""
    if not backends_file.exists():
        procs.write_json(backends_file, {"backends": []})
    gateway = [
        sys.executable, "-m", "haloserve", "gateway", "--backends-file", str(backends_file),
        "--host", opts.gateway_host, "--port", str(opts.gateway_port),
        "--keys-db", str(opts.state_dir / "gateway.db"),
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "haloserve.cluster.supervise", "--", *gateway]
    return procs.launch_detached(cmd, opts.state_dir / "logs" / "gateway.log")


def node_record(state_dir: Path) -> dict[str, Any] | None:
    """What start/join recorded on this box (None when nothing is running from this state dir)."""
    return procs.read_json(state_dir / "node.json")


def save_record(state_dir: Path, record: dict[str, Any]) -> None:
    """Record what this box started, for stop."""
    procs.write_json(state_dir / "node.json", record)


def stop_local(state_dir: Path) -> list[str]:
    """End what start/join began here: the gateway, this node's replica processes, Ray's processes."""
    done: list[str] = []
    record = node_record(state_dir) or {}
    gw = record.get("gateway_pid")
    if isinstance(gw, int) and procs.pid_alive(gw):
        procs.kill_all([gw], grace=10)
        done.append(f"stopped the gateway (pid {gw})")
    served = []
    for path in sorted((state_dir / "replicas").glob("*.json")):
        rec = procs.read_json(path) or {}
        pid = rec.get("pid")
        if isinstance(pid, int) and procs.pid_alive(pid):
            procs.kill_all([pid], grace=10)
            served.append(path.stem)
        path.unlink(missing_ok=True)
    if served:
        done.append(f"stopped {len(served)} replica process(es): {', '.join(served)}")
    recorded = record.get("ray_pids")
    ray = (
        [p for p in recorded if isinstance(p, int) and procs.pid_alive(p)]
        if isinstance(recorded, list)
        else []
    )
    if ray:
        procs.kill_all(ray, grace=5)
        done.append(f"stopped Ray on this node ({len(ray)} processes and their workers)")
    (state_dir / "node.json").unlink(missing_ok=True)
    return done


def wait_until(predicate: object, timeout: float, step: float = 0.2) -> bool:
    """Poll ``predicate()`` until true or ``timeout`` s pass."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(step)
    return False
