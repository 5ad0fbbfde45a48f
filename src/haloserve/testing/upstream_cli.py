"""Run the fake upstream from a shell or as a child process (``python -m haloserve.testing.upstream``).

Every :class:`UpstreamConfig` field is a flag (``--ttft-ms 50``, ``--models a,b``,
``--record-timings``). On start it prints one line, ``listening http://HOST:PORT``, on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import typing
from collections.abc import Iterator, Sequence
from typing import Any

from haloserve.testing.upstream import FakeUpstream, new_event_loop
from haloserve.testing.upstream_config import UpstreamConfig


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m haloserve.testing.upstream",
        description="Fake OpenAI upstream (a test double: scripted timing and failures, no model).",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    for name, field in UpstreamConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        ann = field.annotation
        args = set(typing.get_args(ann)) - {type(None)}
        if ann is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
        elif name == "models":
            p.add_argument(flag, default=argparse.SUPPRESS, help="comma-separated model ids")
        elif name == "words":  # any text, commas included: a JSON list
            p.add_argument(flag, type=json.loads, default=argparse.SUPPRESS, help="JSON list of strings")
        elif name == "model_status":
            p.add_argument(
                flag, default=argparse.SUPPRESS, help="MODEL=STATE,... (loaded, loading, unloaded, failed)"
            )
        elif typing.get_origin(ann) is typing.Literal:
            p.add_argument(
                flag, choices=typing.get_args(ann), default=argparse.SUPPRESS, help=field.description
            )
        else:
            kind = ann if isinstance(ann, type) else next(iter(args))
            p.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=field.description)
    return p


def config_from_args(ns: argparse.Namespace) -> UpstreamConfig:
    """Build the config from parsed flags (absent flags keep their defaults)."""
    values: dict[str, Any] = {k: v for k, v in vars(ns).items() if k in UpstreamConfig.model_fields}
    if "models" in values:
        values["models"] = [m.strip() for m in values["models"].split(",") if m.strip()]
    if "model_status" in values:
        pairs = (item.partition("=") for item in values["model_status"].split(",") if item.strip())
        values["model_status"] = {m.strip(): state.strip() for m, _, state in pairs}
    return UpstreamConfig.model_validate(values)


async def _serve(upstream: FakeUpstream) -> None:
    await upstream.start()
    print(f"listening {upstream.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await upstream.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM."""
    ns = _parser().parse_args(argv)
    upstream = FakeUpstream(config_from_args(ns), ns.host, ns.port)
    loop = new_event_loop()
    try:
        loop.run_until_complete(_serve(upstream))
    finally:
        loop.close()
    return 0


def config_flags(config: UpstreamConfig) -> list[str]:
    """Command-line flags that reproduce ``config`` (non-default fields only)."""
    out: list[str] = []
    defaults = UpstreamConfig()
    for name in UpstreamConfig.model_fields:
        value = getattr(config, name)
        if value == getattr(defaults, name):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif name == "words":
            out += [flag, json.dumps(value)]
        elif isinstance(value, list):
            out += [flag, ",".join(value)]
        elif isinstance(value, dict):
            out += [flag, ",".join(f"{k}={v}" for k, v in value.items())]
        else:
            out += [flag, str(value)]
    return out


@contextlib.contextmanager
def spawn(
    config: UpstreamConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    cpus: set[int] | None = None,
) -> Iterator[str]:
    """Run the fake upstream in a child process; yields its base URL and stops it on exit.

    ``cpus`` pins the child to those CPUs (benchmarks keep it off the load generator's core).
    """
    cmd = [sys.executable, "-m", "haloserve.testing.upstream", "--host", host, "--port", str(port)]
    cmd += config_flags(config or UpstreamConfig())
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    if cpus:
        os.sched_setaffinity(proc.pid, cpus)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("listening "):
            raise RuntimeError(f"fake upstream did not start (exit {proc.poll()}): {line!r}")
        yield line.split(" ", 1)[1]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
