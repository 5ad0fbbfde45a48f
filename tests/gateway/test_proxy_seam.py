"""The proxy on its own: built from the collaborators it is given (no Gateway), against real loopback
servers. What it learns about backends reaches the failure callback; usage, quotas, metrics and the
access log are the ones passed in."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from haloserve.bench.preflight import run_sync
from haloserve.config.gateway import GatewaySettings
from haloserve.errors import UpstreamError
from haloserve.gateway.accounting import Accounting
from haloserve.gateway.backends import Backend
from haloserve.gateway.http1 import ClientPool
from haloserve.gateway.metrics import GatewayMetrics
from haloserve.gateway.policy import Balancer
from haloserve.gateway.pool import Pool
from haloserve.gateway.proxy import Proxy
from haloserve.gateway.serverlog import AccessLog
from haloserve.protocol import sse
from haloserve.protocol.errors import error_event
from haloserve.testing.remote import free_port
from haloserve.testing.upstream import serve_in_thread
from haloserve.testing.upstream_config import UpstreamConfig

MSG = [{"role": "user", "content": "hello there"}]


class Failures:
    """The failure callback: remembers every (backend, fatal) it was told of."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bool]] = []

    def __call__(self, b: Backend, *, fatal: bool) -> None:
        self.seen.append((b.url, fatal))


@asynccontextmanager
async def served(
    settings: GatewaySettings, failures: Failures, log: io.StringIO | None = None
) -> AsyncIterator[tuple[Proxy, str]]:
    """A Proxy over ``settings.backends`` (taken as healthy), served on a loopback port."""
    pool = Pool(settings.backends, Balancer(settings.policy))
    for b in pool.backends:
        b.healthy = True  # what a first health probe would find; probing is the gateway's part
    upstream = ClientPool(connect_timeout=2.0)
    proxy = Proxy(
        settings=lambda: settings,
        pool=pool,
        upstream=upstream,
        metrics=GatewayMetrics(lambda: pool),
        on_failure=failures,
        accounting=Accounting(),
        access_log=AccessLog(log),
    )
    server = web.Server(proxy.handle)
    tcp = await asyncio.get_running_loop().create_server(server, "127.0.0.1", 0)
    try:
        yield proxy, f"http://127.0.0.1:{tcp.sockets[0].getsockname()[1]}/v1"
    finally:
        tcp.close()
        await server.shutdown(1.0)
        upstream.close()


def _settings(tmp_path: Path, backends: list[str], **kw: Any) -> GatewaySettings:
    specs = [{"url": url, "models": ["fake-model"]} for url in backends]
    return GatewaySettings(port=0, backends=specs, keys_db=tmp_path / "g.db", access_log=True, **kw)


def test_a_dead_backend_is_blamed_through_the_callback_and_the_request_goes_elsewhere(tmp_path: Path) -> None:
    with ExitStack() as stack:
        good = stack.enter_context(serve_in_thread(UpstreamConfig()))
        dead = f"http://127.0.0.1:{free_port()}"
        settings = _settings(tmp_path, [dead, good.url], policy="round-robin", retries=1)
        failures = Failures()

        async def main() -> tuple[list[int], Proxy]:
            async with served(settings, failures) as (proxy, base), httpx.AsyncClient() as client:
                codes = []
                for _ in range(4):
                    body = {"model": "fake-model", "messages": MSG, "max_tokens": 3}
                    r = await client.post(base + "/chat/completions", json=body)
                    codes.append(r.status_code)
                return codes, proxy

        codes, proxy = run_sync(main())
    assert codes == [200] * 4
    assert failures.seen and set(failures.seen) == {(dead, True)}  # refused: the node is down, fatal
    assert good.stats.by_path["/v1/chat/completions"] == 4
    usage = proxy.accounting.usage.take()
    assert sum(d.requests for d in usage.values()) == 4
    assert sum(d.completion_tokens for d in usage.values()) == 12
    assert proxy.active == 0


def test_a_stream_cut_midway_ends_with_the_shared_error_event_and_blames_the_backend(tmp_path: Path) -> None:
    with ExitStack() as stack:
        cut = stack.enter_context(serve_in_thread(UpstreamConfig(cut_rate=1.0, cut_after_tokens=2)))
        settings = _settings(tmp_path, [cut.url])
        failures = Failures()

        async def main() -> bytes:
            async with served(settings, failures) as (_, base), httpx.AsyncClient() as client:
                body = {"model": "fake-model", "messages": MSG, "stream": True, "max_tokens": 8}
                async with client.stream("POST", base + "/chat/completions", json=body) as r:
                    assert r.status_code == 200
                    return b"".join([chunk async for chunk in r.aiter_raw()])

        raw = run_sync(main())
    dec = sse.Decoder()
    events = dec.feed(raw) + dec.close()
    assert len(events) >= 3 and not events[-1].done
    err = events[-1].json()["error"]
    assert err["type"] == "server_error" and "failed mid-stream" in err["message"]
    # the very bytes the server sends for a failed stream: one builder for both
    assert raw.endswith(error_event(UpstreamError(err["message"])))
    assert failures.seen == [(cut.url, False)]


def test_the_access_log_given_gets_one_line_per_request(tmp_path: Path) -> None:
    with ExitStack() as stack:
        up = stack.enter_context(serve_in_thread(UpstreamConfig()))
        settings = _settings(tmp_path, [up.url])

        log = io.StringIO()

        async def main() -> None:
            async with served(settings, Failures(), log) as (proxy, base), httpx.AsyncClient() as client:
                await client.post(base + "/completions", json={"model": "fake-model", "prompt": "x"})
                await client.post(base + "/completions", json={"model": "nope", "prompt": "x"})
                assert log.getvalue() == ""  # buffered off the hot path until the flush
                proxy.access_log.flush()

        run_sync(main())
        lines = log.getvalue().splitlines()
    entries = [json.loads(line) for line in lines]
    assert [(e["model"], e["status"]) for e in entries] == [("fake-model", 200), ("nope", 404)]
    assert entries[0]["backend"] == up.url and entries[1]["backend"] == "-"
