"""A broken or hostile backend against a real gateway on loopback (issue 13, item 4: gateway buffers).

- a stream whose events never end (no blank line) was held without limit at quadratic cost: it is
  cut at ``max_backend_event_bytes`` with a clean error, and the gateway's memory stays flat;
- a response head that never ends grew the gateway and got a healthy backend ejected: it is cut at
  ``max_backend_head_bytes``, counted once against the backend that sent it, and the request is
  served by another backend;
- a non-streamed body past ``max_backend_body_bytes`` is a clean 502;
- framing costs linear time: 8 MB without a separator, in 1 KiB reads, takes well under a second.

Every test is bounded: the fake upstreams stop flooding after ``flood_bytes`` and every client call
has a timeout.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from haloserve.gateway.stream import UsageScanner
from haloserve.protocol import sse
from haloserve.testing.gateway import ThreadedGateway
from haloserve.testing.upstream import FakeUpstream

MSG = [{"role": "user", "content": "one two three"}]
FLOOD = 256 << 20  # what a broken backend would send: far more than any bound lets through
RSS_SLACK = 64 << 20  # allowed growth of this process (gateway, fakes and client all live here)


def rss() -> int:
    """Resident memory of this process, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")




def _post(gw: ThreadedGateway, stream: bool, **extra: Any) -> httpx.Response:
    body = {"model": "fake-model", "messages": MSG, "stream": stream, "max_tokens": 8, **extra}
    return httpx.post(gw.base_url + "/chat/completions", json=body, timeout=30)


def _backend(gw: ThreadedGateway, url: str) -> tuple[str, int]:
    def read() -> tuple[str, int]:
        b = next(b for b in gw.gateway.pool.backends if b.url == url)
        return b.state, b.failures

    return gw.call(read)


@pytest.mark.parametrize("line_end", ["lf", "crlf"])
@pytest.mark.slow
def test_a_stream_without_separators_ends_cleanly_at_the_event_bound(
    upstream: Callable[..., FakeUpstream], gateway: Callable[..., ThreadedGateway], line_end: str
) -> None:
    bad = upstream(unframed_rate=1.0, cut_after_tokens=0, flood_bytes=FLOOD, line_end=line_end)
    gw = gateway([bad.url])
    before = rss()
    start = time.monotonic()
    for _ in range(4):
        r = _post(gw, stream=True)
        err = r.json()["error"]
        assert r.status_code == 502 and err["type"] == "server_error" and err["code"] == "upstream_error"
        assert "longer than 1048576 bytes" in err["message"] and set(err) == {
            "message",
            "type",
            "param",
            "code",
        }
    assert time.monotonic() - start < 20
    assert rss() - before < RSS_SLACK, f"grew {(rss() - before) >> 20} MiB"
    assert bad.stats.injected["unframed"] == 4
    # the size may come from the request (an echoed prompt): not retried, not held against the backend
    assert _backend(gw, bad.url) == ("closed", 0)
    assert bad.stats.by_path["/v1/chat/completions"] == 4


@pytest.mark.parametrize("line_end", ["lf", "crlf"])
def test_an_unframed_tail_mid_stream_ends_with_one_error_event(
    upstream: Callable[..., FakeUpstream], gateway: Callable[..., ThreadedGateway], line_end: str
) -> None:
    bad = upstream(unframed_rate=1.0, cut_after_tokens=2, flood_bytes=FLOOD, line_end=line_end)
    gw = gateway([bad.url], max_backend_event_bytes=64 << 10)
    body = {"model": "fake-model", "messages": MSG, "stream": True, "max_tokens": 8}
    decoder = sse.Decoder()
    with httpx.stream("POST", gw.base_url + "/chat/completions", json=body, timeout=30) as r:
        events = [e for piece in r.iter_raw() for e in decoder.feed(piece)] + decoder.close()
    assert r.status_code == 200
    *chunks, last = events
    assert [c.json()["choices"][0]["delta"].get("content") for c in chunks] == ["", " lorem", " ipsum"]
    err = last.json()["error"]
    assert err["type"] == "server_error" and "longer than 65536 bytes" in err["message"]


@pytest.mark.slow
def test_an_endless_response_head_is_cut_and_the_healthy_backend_keeps_serving(
    upstream: Callable[..., FakeUpstream], gateway: Callable[..., ThreadedGateway]
) -> None:
    bad = upstream(endless_header_rate=1.0, flood_bytes=FLOOD)
    good = upstream()
    gw = gateway([bad.url, good.url], policy="round-robin", retries=1, eject_failures=3)
    before = rss()
    start = time.monotonic()
    while bad.stats.injected["endless_header"] == 0:
        assert _post(gw, stream=False).status_code == 200
        assert time.monotonic() - start < 20
    # the backend that sent it is at fault, once: one failure does not open its circuit
    assert _backend(gw, bad.url) == ("closed", 1)
    for i in range(8):
        r = _post(gw, stream=i % 2 == 1)
        assert r.status_code == 200, r.text  # retried on the healthy backend
    assert time.monotonic() - start < 30
    assert rss() - before < RSS_SLACK, f"grew {(rss() - before) >> 20} MiB"
    assert _backend(gw, good.url) == ("closed", 0), "the healthy backend is never held responsible"
    state, failures = _backend(gw, bad.url)
    assert failures >= 3 and state == "open", "a backend that keeps sending endless heads is ejected"


def test_an_endless_head_from_the_only_backend_is_a_clean_502(
    upstream: Callable[..., FakeUpstream], gateway: Callable[..., ThreadedGateway]
) -> None:
    bad = upstream(endless_header_rate=1.0, flood_bytes=FLOOD)
    gw = gateway([bad.url], retries=0, max_backend_head_bytes=4096)
    start = time.monotonic()
    for stream in (False, True):
        r = _post(gw, stream=stream)
        err = r.json()["error"]
        assert r.status_code == 502 and err["code"] == "upstream_error"
        assert "head is over 4096 bytes" in err["message"]
    assert time.monotonic() - start < 10


def test_a_body_past_its_bound_is_a_clean_502_not_held_against_the_backend(
    upstream: Callable[..., FakeUpstream], gateway: Callable[..., ThreadedGateway]
) -> None:
    up = upstream()
    gw = gateway([up.url], max_backend_body_bytes=2048)
    assert _post(gw, stream=False, max_tokens=4).status_code == 200
    r = _post(gw, stream=False, max_tokens=600)
    err = r.json()["error"]
    assert r.status_code == 502 and "body is over 2048 bytes" in err["message"]
    assert _backend(gw, up.url) == ("closed", 0)
    assert _post(gw, stream=True, max_tokens=600).status_code == 200  # a relayed stream is not held


@pytest.mark.parametrize(
    "piece",
    [b"x" * 1024, (b"data: " + b"x" * 100 + b"\r\n") * 10],
    ids=["no-line-ends", "lines-no-blank-line"],
)
def test_framing_costs_linear_time(piece: bytes) -> None:
    makers: list[Callable[[], Any]] = [sse.Decoder, lambda: UsageScanner(strip=True, max_event=None)]
    for make in makers:
        reader = make()
        start = time.perf_counter()
        for _ in range(8 << 10):  # 8 MiB in 1 KiB reads, never a separator
            assert not list(reader.feed(piece))
        # linear: ~0.1 s here; the old readers re-joined and re-searched all of it on every read
        assert time.perf_counter() - start < 5.0, type(reader).__name__
    scanner = UsageScanner(strip=False, max_event=1 << 20)
    with pytest.raises(sse.EventTooLarge):
        for _ in range(2 << 10):
            scanner.feed(piece)


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"], ids=["lf", "crlf"])
@pytest.mark.slow
def test_splitting_many_events_costs_linear_time(eol: bytes) -> None:
    event = sse.encode({"choices": [{"delta": {"content": " lorem"}}], "usage": None}).replace(b"\n", eol)
    block = event * (8_000_000 // len(event))  # ~8 MB of whole events in one piece
    start = time.perf_counter()
    events = sse.Decoder().feed(block)
    assert len(events) == len(block) // len(event) and events[-1].json()["choices"][0]["delta"]["content"]
    assert time.perf_counter() - start < 10.0  # ~1 s here: each event is searched for once
