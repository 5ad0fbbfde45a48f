"""The proxy's HTTP/1.1 client against real loopback servers: bodies, keep-alive, failures, flow control."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from haloserve.bench.preflight import run_sync
from haloserve.gateway.http1 import (
    BrokenBody,
    ClientPool,
    ConnectFailed,
    Dropped,
    Origin,
    TooLarge,
    UpstreamTimeout,
    request_head,
)
from haloserve.testing.remote import free_port
from haloserve.testing.upstream import FakeUpstream

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
CHAT = json.dumps({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request (head and Content-Length body) as the scripted server received it."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    return head + await reader.readexactly(length)


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A raw TCP server that runs ``script`` for every connection; yields (url, requests seen)."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def recording(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        orig = reader.readuntil

        async def readuntil(sep: bytes = b"\n") -> bytes:
            data = await orig(sep)
            seen.append(data)
            return data

        reader.readuntil = readuntil  # type: ignore[method-assign]
        await handle(reader, writer)

    server = await asyncio.start_server(recording, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        server.close()
        await server.wait_closed()


def on_uvloop(fn: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """Run an async test on a uvloop loop, as the gateway runs."""

    @functools.wraps(fn)
    def run() -> None:
        run_sync(fn())

    return run


def pool(**kw: float) -> ClientPool:
    return ClientPool(connect_timeout=kw.pop("connect_timeout", 2.0), **kw)


def test_origin_and_request_head() -> None:
    o = Origin.parse("https://node1.lan")
    assert (o.scheme, o.host, o.port, o.host_header) == ("https", "node1.lan", 443, "node1.lan")
    o = Origin.parse("http://10.0.0.2:8080/v1")
    assert (o.port, o.host_header) == (8080, "10.0.0.2:8080")
    head = request_head("POST", "/v1/completions", o, {"X-Request-Id": "r1"}, 12)
    assert head == (
        b"POST /v1/completions HTTP/1.1\r\nHost: 10.0.0.2:8080\r\nContent-Length: 12\r\n"
        b"X-Request-Id: r1\r\n\r\n"
    )
    with pytest.raises(ValueError, match="line break"):
        request_head("POST", "/", o, {"X-Request-Id": "a\r\nEvil: 1"}, 0)
    with pytest.raises(ValueError, match="scheme"):
        Origin.parse("ftp://x")


@on_uvloop
async def test_bodies_keepalive_and_streams_from_a_real_server() -> None:
    async with FakeUpstream() as up:
        p = pool()
        for _ in range(3):
            r = await p.request(up.url, "/v1/chat/completions", CHAT.encode(), {}, 10)
            assert r.status == 200 and r.content_type == "application/json"
            assert json.loads(await r.read())["usage"]["completion_tokens"] == 5
        assert p.opened == 1 and up.stats.connections == 1  # one keep-alive connection for all three
        body = json.dumps({**json.loads(CHAT), "stream": True}).encode()
        r = await p.request(up.url, "/v1/chat/completions", body, {}, 10)
        assert r.headers["transfer-encoding"] == "chunked"
        first = await r.read_some()
        relayed: list[bytes] = [first]
        r.relay(relayed.append)
        await r.wait()
        text = b"".join(relayed)
        assert r.ended and text.count(b"data: ") == 1 + 5 + 1 + 1 and text.endswith(b"data: [DONE]\n\n")
        assert p.opened == 1 and p.idle_count(up.url) == 1
        r = await p.request(up.url, "/v1/chat/completions", b"{bad", {}, 10)
        assert r.status == 400 and json.loads(await r.read())["error"]["type"] == "invalid_request_error"
        p.close()


@on_uvloop
async def test_length_chunked_and_until_close_bodies() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()

    async with scripted(script) as (url, _):
        p = pool()
        assert await (await p.request(url, "/a", b"x", {}, 5)).read() == b"hello"
        assert await (await p.request(url, "/b", b"", {}, 5)).read() == b"abcde"
        r = await p.request(url, "/c", b"", {}, 5)
        assert await r.read() == b"until the end" and r.ended
        assert p.opened == 1 and p.idle_count() == 0  # "Connection: close" is never pooled


@on_uvloop
async def test_failures_are_told_apart() -> None:
    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async def cut_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    p = pool(connect_timeout=1.0)
    with pytest.raises(ConnectFailed):
        await p.request(f"http://127.0.0.1:{free_port()}", "/", b"", {}, 5)
    async with scripted(close_at_once) as (url, _):
        with pytest.raises(Dropped):
            await p.request(url, "/", b"", {}, 5)
    async with scripted(cut_mid_body) as (url, _):
        r = await p.request(url, "/", b"", {}, 5)
        assert await r.read_some() == b"abc"
        with pytest.raises(BrokenBody, match="mid-body"):
            await r.read_some()
    async with scripted(garbage) as (url, _):
        with pytest.raises(BrokenBody, match="malformed"):
            await p.request(url, "/", b"", {}, 5)
    async with scripted(silent) as (url, _):
        with pytest.raises(UpstreamTimeout):
            await p.request(url, "/", b"", {}, 0.3)
    assert p.idle_count() == 0  # no failed connection went back to the pool


@on_uvloop
async def test_heads_and_buffered_bodies_are_bounded() -> None:
    async def endless_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        for _ in range(64):  # 4 MiB, unless the client hangs up first
            writer.write(b"a" * 65536)
            await writer.drain()

    async def interim_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        for _ in range(4096):
            writer.write(b"HTTP/1.1 100 Continue\r\nX-Pad: " + b"p" * 64 + b"\r\n\r\n")
            await writer.drain()

    async def endless_trailer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Trailer: ")
        for _ in range(64):
            writer.write(b"t" * 65536)
            await writer.drain()

    async def big_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"b" * 100_000)
        await writer.drain()

    p = ClientPool(connect_timeout=2.0, max_head=8192, max_body=50_000)
    for script in (endless_head, interim_forever):
        async with scripted(script) as (url, _):
            with pytest.raises(TooLarge, match="head is over 8192 bytes"):
                await p.request(url, "/", b"", {}, 10)
    async with scripted(endless_trailer) as (url, _):
        r = await p.request(url, "/", b"", {}, 10)
        with pytest.raises(TooLarge, match="trailer is over 8192 bytes"):
            await r.read()
        r.close()
    async with scripted(big_body) as (url, _):
        r = await p.request(url, "/", b"", {}, 10)
        with pytest.raises(TooLarge, match="body is over 50000 bytes"):
            await r.read()
        r.close()
    assert p.idle_count() == 0


@on_uvloop
async def test_a_stale_pooled_connection_is_skipped_or_reported_as_dropped() -> None:
    async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()  # keep-alive promised, then the server closes the idle connection

    async with scripted(one_then_close) as (url, _):
        p = pool()
        assert await (await p.request(url, "/", b"", {}, 5)).read() == b"ok"
        await asyncio.sleep(0.1)  # the close arrives: the pooled connection is known dead
        assert await (await p.request(url, "/", b"", {}, 5)).read() == b"ok"
        assert p.opened == 2
        p.keepalive = 0.0  # idle connections past the keep-alive time are never reused either
        assert await (await p.request(url, "/", b"", {}, 5)).read() == b"ok"
        assert p.opened == 3


@on_uvloop
async def test_abandoning_a_response_closes_its_connection() -> None:
    closed = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            while True:
                writer.write(b"5\r\nchunk\r\n")
                await writer.drain()
                await asyncio.sleep(0.01)
        except ConnectionError:
            closed.set()

    async with scripted(endless) as (url, _):
        p = pool()
        r = await p.request(url, "/", b"", {}, 5)
        assert (await r.read_some()).startswith(b"chunk")
        r.close()
        await asyncio.wait_for(closed.wait(), 5)  # the server saw its client go away
        assert p.idle_count() == 0


@on_uvloop
async def test_pause_stops_reading_until_resumed() -> None:
    total = 4 * 2**20

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        for _ in range(total // 65536):
            writer.write(b"x" * 65536)
            await writer.drain()

    async with scripted(big) as (url, _):
        p = pool()
        r = await p.request(url, "/", b"", {}, 10)
        got: list[int] = []

        def sink(chunk: bytes) -> None:
            got.append(len(chunk))
            if sum(got) > 2**20:
                r.pause()

        r.relay(sink)
        await r.wait()
        assert r.paused and not r.ended
        at_pause = sum(got)
        await asyncio.sleep(0.2)
        assert sum(got) == at_pause < total  # nothing was read while paused (the kernel holds the rest)
        r.relay(lambda chunk: got.append(len(chunk)))
        r.resume()
        await r.wait()
        assert r.ended and sum(got) == total


@on_uvloop
async def test_cancelling_a_request_aborts_its_connection() -> None:
    closed = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        try:
            await reader.read()  # EOF when the client aborts
        finally:
            closed.set()

    async with scripted(slow) as (url, _):
        p = pool()
        task = asyncio.create_task(p.request(url, "/", b"", {}, 10))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(closed.wait(), 5)


@on_uvloop
async def test_a_body_that_ends_while_paused_leaves_a_reusable_connection() -> None:
    async def two(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nab")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"cdef")  # the rest arrives in one read, after the relay paused
            await writer.drain()

    async with scripted(two) as (url, _):
        p = pool()
        r = await p.request(url, "/", b"", {}, 5)
        r.relay(lambda chunk: r.pause())
        await r.wait()
        assert r.paused
        r.resume()
        await r.wait()
        assert r.ended and p.idle_count() == 1
        again = await p.request(url, "/", b"", {}, 2)  # reading was resumed before pooling
        assert await again.read() == b"abcdef" and p.opened == 1
