"""Before a run: check the server answers and serves the model; record where the run happens."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import platform
import resource
from collections.abc import Coroutine
from typing import Any, TypeVar

import aiohttp

from haloserve import __version__
from haloserve.bench.client import http_error_message
from haloserve.bench.schema import Environment, ServerInfo
from haloserve.config.bench import BenchSettings
from haloserve.errors import CommandError

T = TypeVar("T")


async def preflight(
    http: aiohttp.ClientSession, s: BenchSettings, headers: dict[str, str]
) -> tuple[ServerInfo, list[str]]:
    """Ask ``GET /v1/models``; fail fast when nothing could be measured, else return notes for the report.

    An unreachable server or a refused key (401/403) ends the run at once with one clear line. A
    model the server does not list is only a note: some servers (llama-server) accept any name, and
    if this one does not, every request fails with its own message, counted by kind.
    """
    notes: list[str] = []
    models: list[str] = []
    server_header = None
    if not s.preflight:
        if not s.model:
            raise CommandError("--no-preflight needs --model")
        return ServerInfo(url=s.url, model=s.model), notes
    url = s.url + "/v1/models"
    try:
        async with http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as resp:
            server_header = resp.headers.get("Server")
            body = await resp.read()
            if resp.status in (401, 403):
                raise CommandError(
                    f"{s.url} refused the request ({http_error_message(resp.status, body)}); check --api-key"
                )
            if resp.status == 200:
                try:
                    import json

                    data = json.loads(body).get("data") or []
                    models = [str(m.get("id")) for m in data if isinstance(m, dict) and m.get("id")]
                except (ValueError, AttributeError):
                    notes.append("GET /v1/models did not return an OpenAI model list")
            else:
                notes.append(f"GET /v1/models answered {http_error_message(resp.status, body)}")
    except aiohttp.ClientConnectorError as exc:
        raise CommandError(f"cannot connect to {s.url}: {exc.os_error.strerror or exc}") from None
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise CommandError(
            f"{s.url} did not answer GET /v1/models: {type(exc).__name__} {exc}".strip()
        ) from None
    model = s.model
    if not model:
        if not models:
            raise CommandError(f"no --model given and {url} lists no model")
        model = models[0]
    elif models and model not in models:
        notes.append(
            f"model {model!r} is not listed by {s.url}/v1/models (it lists: {', '.join(models[:8])})"
        )
    return ServerInfo(url=s.url, model=model, models=models, server_header=server_header), notes


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the architecture where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(server: ServerInfo) -> Environment:
    """The client machine and software, and the server, as recorded in ``results.json``."""
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    return Environment(
        halo_version=__version__,
        python=platform.python_version(),
        platform=platform.platform(),
        cpu=cpu_model(),
        cpu_count=os.cpu_count() or 1,
        event_loop="uvloop" if loop == "uvloop" else "asyncio",
        aiohttp=aiohttp.__version__,
        started_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        server=server,
    )


def raise_fd_limit() -> int:
    """Lift the soft open-files limit to the hard one (hundreds of streams need sockets); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            return soft
    return soft


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a uvloop loop when uvloop is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)
    return uvloop.run(coro)
