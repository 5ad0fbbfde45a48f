"""Hostile requests against a real gateway on loopback with fake upstreams (issue 13: items 2, 8, 10).

- a request that makes backends fail (500) must not take them out for everyone (item 2);
- concurrency must not get a key past its tokens/minute quota (item 8);
- deep JSON, oversized headers carrying a key, chunked bodies over the limit, auth order and
  ``/metrics`` auth (item 10).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from haloserve.errors import RateLimitError
from haloserve.gateway.accounting import KeyCache, Quotas, reserve_estimate
from haloserve.gateway.store import KeyRecord, hash_key
from haloserve.testing.gateway import ThreadedGateway, gateway_process
from haloserve.testing.upstream import FakeUpstream, serve_in_thread
from haloserve.testing.upstream_config import UpstreamConfig

MSG = [{"role": "user", "content": "one two three"}]
POISON = "POISON-1f3a"  # the fake upstreams answer 500 to any request containing it
SECRET = "halo-SECRETSECRETSECRET"


HEALTH = (0.2, 2.0)  # gateway probes (interval, timeout), see conftest.py


def chat(gw: ThreadedGateway, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(gw.base_url + "/chat/completions", json=body, headers=headers, timeout=30)


def backend_states(gw: ThreadedGateway) -> list[tuple[bool, str]]:
    health = httpx.get(gw.url + "/health", timeout=10).json()
    return [(b["healthy"], b["circuit"]) for b in health["backends"]]


def chats(up: FakeUpstream) -> int:
    return up.stats.by_path.get("/v1/chat/completions", 0)


# 13.2: one client must not take a backend out


@pytest.mark.slow
def test_poisoned_requests_do_not_eject_backends(upstream: Any, gateway: Any) -> None:
    ups = [upstream(error_on=POISON) for _ in range(3)]
    gw = gateway([u.url for u in ups], policy="round-robin", eject_failures=3, retries=2)
    poisoned = {"model": "fake-model", "messages": [{"role": "user", "content": POISON}], "max_tokens": 2}
    for i in range(12):
        r = chat(gw, {**poisoned, "stream": i % 2 == 1})
        assert r.status_code == 500 and POISON in r.json()["error"]["message"], r.text
    # each poisoned request was asked of two backends, not of all three
    assert sum(u.stats.injected["poisoned"] for u in ups) == 2 * 12
    assert backend_states(gw) == [(True, "closed")] * 3
    for stream in (False, True) * 5:
        r = chat(gw, {"model": "fake-model", "messages": MSG, "max_tokens": 2, "stream": stream})
        assert r.status_code == 200, r.text
    assert gw.call(lambda: [b.failures for b in gw.gateway.pool.backends]) == [0, 0, 0]
    assert all(chats(u) > 0 for u in ups), "every backend still takes traffic"


def test_poison_is_retried_once_and_single_backend_stays(upstream: Any, gateway: Any) -> None:
    up = upstream(error_on=POISON)
    gw = gateway([up.url], eject_failures=1, retries=2)
    poisoned = {"model": "fake-model", "messages": [{"role": "user", "content": POISON}]}
    for _ in range(5):
        assert chat(gw, poisoned).status_code == 500
    assert up.stats.injected["poisoned"] == 5, "nowhere else to ask: not retried on the same backend"
    assert backend_states(gw) == [(True, "closed")]
    assert chat(gw, {"model": "fake-model", "messages": MSG}).status_code == 200


@pytest.mark.slow
def test_backends_that_really_fail_are_still_ejected(upstream: Any, gateway: Any, stack: ExitStack) -> None:
    broken = upstream(error_rate=1.0, error_status=500)  # 500 for everything, whatever the request
    busy = upstream(error_rate=1.0, error_status=503)
    good = upstream()
    dead_cm = serve_in_thread(UpstreamConfig())
    dead = dead_cm.__enter__()
    gw = gateway(
        [broken.url, busy.url, good.url, dead.url],
        policy="round-robin",
        eject_failures=2,
        eject_time=60,
        retries=3,
        health_interval=30,  # passive ejection is under test, not the probes
    )
    dead_cm.__exit__(None, None, None)  # connections to it are now refused
    for i in range(16):
        r = chat(gw, {"model": "fake-model", "messages": MSG, "max_tokens": 2, "stream": i % 2 == 1})
        assert r.status_code == 200, r.text
    circuits = [c for _, c in backend_states(gw)]
    assert circuits == ["open", "open", "closed", "open"], circuits
    before = chats(broken) + chats(busy)
    for _ in range(4):
        assert chat(gw, {"model": "fake-model", "messages": MSG}).status_code == 200
    assert chats(broken) + chats(busy) == before, "ejected backends get no traffic"


def test_4xx_is_passed_on_and_counts_against_nobody(upstream: Any, gateway: Any) -> None:
    ups = [upstream() for _ in range(2)]
    gw = gateway([u.url for u in ups], policy="round-robin", eject_failures=1)
    for _ in range(6):  # the fake answers 400 without 'messages'
        r = chat(gw, {"model": "fake-model", "prompt": "x"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert sum(chats(u) for u in ups) == 6, "a 4xx is not retried"
    assert backend_states(gw) == [(True, "closed")] * 2


# 13.8: tokens reserved at admission, settled after


@pytest.mark.slow
def test_token_quota_holds_under_concurrency(upstream: Any, gateway: Any) -> None:
    up = upstream(models=["m"], ttft_ms=400)
    gw = gateway([up.url], require_keys=True)
    key = gw.gateway.store.create_key("small", tpm=20).secret
    gw.run(gw.gateway.refresh_keys())
    body = {"model": "m", "messages": MSG, "max_tokens": 5}  # 3 + 5 tokens each at the fake
    results: list[httpx.Response] = []
    lock = threading.Lock()
    go = threading.Barrier(20)

    def call() -> None:
        go.wait()
        r = chat(gw, body, key)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=call) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 20
    ok = [r for r in results if r.status_code == 200]
    served = sum(r.json()["usage"]["total_tokens"] for r in ok)
    assert ok and served <= 20, (len(ok), served)
    for r in results:
        if r.status_code != 200:
            err = r.json()["error"]
            assert r.status_code == 429 and err["code"] == "tokens_per_minute_exceeded", r.text
            assert err["type"] == "rate_limit_error" and int(r.headers["Retry-After"]) >= 1


@pytest.mark.slow
def test_token_reservations_are_refunded(upstream: Any, gateway: Any) -> None:
    up = upstream(models=["m"], eos_after=2)  # asked for up to 60 tokens, it stops after 2
    gw = gateway([up.url], require_keys=True, reserve_tokens=10)
    key = gw.gateway.store.create_key("refunds", tpm=200).secret
    gw.run(gw.gateway.refresh_keys())
    for _ in range(5):  # rejected by the backend (400): everything held comes back
        assert chat(gw, {"model": "m", "prompt": "x", "max_tokens": 60}, key).status_code == 400
    for i in range(10):  # each holds 65 while it runs and is charged 5 after (without refunds: 3 fit)
        r = chat(gw, {"model": "m", "messages": MSG, "max_tokens": 60}, key)
        assert r.status_code == 200, (i, r.text)
        assert r.json()["usage"]["total_tokens"] == 5
    # 50 used: without max_tokens a request holds its prompt plus --reserve-tokens (10)
    assert chat(gw, {"model": "m", "messages": MSG}, key).status_code == 200
    # 55 used: one that may use 200 more does not fit until the window is empty
    r = chat(gw, {"model": "m", "messages": MSG, "max_tokens": 200}, key)
    assert r.status_code == 429 and "may use up to 205" in r.json()["error"]["message"]


def test_quota_reservation_arithmetic() -> None:
    rec = KeyRecord(id="k", name="team", hint="", created=0, tpm=100)
    q = Quotas()
    held = [q.admit(rec, 40, now=0.0), q.admit(rec, 40, now=1.0)]
    with pytest.raises(RateLimitError) as exc:
        q.admit(rec, 40, now=2.0)  # 80 held: 40 more do not fit
    # 20 too many: at 60 s the 80 start to slide out of the window, 20 of them by 75 s
    assert exc.value.headers["Retry-After"] == "73"
    q.settle(rec, held[0], 5, now=3.0)
    q.admit(rec, 40, now=4.0)  # 45 + 40 fit after the refund
    q.settle(rec, held[1], 70, now=5.0)  # 30 more than held: charged
    with pytest.raises(RateLimitError):
        q.admit(rec, 1, now=6.0)  # 5 + 70 + 40 held = 115
    big = Quotas()
    whole = big.admit(rec, 500, now=0.0)  # larger than the limit: holds all of it
    assert whole is not None and whole.tokens == 100
    with pytest.raises(RateLimitError):
        big.admit(rec, 1, now=1.0)
    # a refund after the minute turned goes back to the previous minute
    big.settle(rec, whole, 10, now=70.0)
    assert big.windows["k"].tok_prev == 10 and big.windows["k"].tok_now == 0
    assert reserve_estimate({"max_tokens": 7, "n": 2}, "abcdefgh", 99) == 2 + 14
    assert reserve_estimate({"max_tokens": True}, "\ud800", 99) == 1 + 99  # lone surrogate: no crash
    assert reserve_estimate({"max_tokens": 50}, "abcd", None) == 1  # embeddings generate nothing


def test_key_cache_keeps_no_junk_headers() -> None:
    cache = KeyCache({hash_key(SECRET): KeyRecord(id="k", name="n", hint="", created=0)})
    for i in range(200):  # distinct 8 KB header values would pin 1.6 MB here, 80 MB at the cap
        assert cache.lookup(f"Bearer {i:04d}{'x' * 8000}", required=False) is None
    assert cache.lookup(f"Bearer {SECRET}", required=True) is not None
    assert sum(len(k) for k in cache._memo) < 1000


# 13.10: smaller ones


def test_deep_json_is_400_without_a_traceback(
    upstream: Any, gateway: Any, caplog: pytest.LogCaptureFixture
) -> None:
    gw = gateway([upstream().url])
    deep = "[" * 10_000 + "]" * 10_000
    for body in (
        '{"model": "fake-model", "messages": ' + deep + "}",
        '{"model": "fake-model", "stream": true, "messages": [], "x": ' + deep + "}",
        deep,
    ):
        r = httpx.post(gw.base_url + "/chat/completions", content=body.encode(), timeout=30)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text
    assert not [rec for rec in caplog.records if rec.levelname == "ERROR"]


def test_chunked_body_over_the_limit_is_413(upstream: Any, gateway: Any) -> None:
    gw = gateway([upstream().url], max_body_bytes=4096)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"1000\r\n" + b"x" * 4096 + b"\r\n"
    with socket.create_connection(("127.0.0.1", gw.gateway.port), timeout=10) as s:
        s.sendall(head + chunk * 3 + b"0\r\n\r\n")
        reply = s.recv(65536)
    status = reply.split(b"\r\n", 1)[0]
    assert b" 413 " in status, reply[:200]
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_too_large"


@pytest.mark.slow
def test_authentication_comes_before_the_body(upstream: Any, gateway: Any) -> None:
    gw = gateway([upstream().url], require_keys=True, max_body_bytes=4096)
    key = gw.gateway.store.create_key("k").secret
    gw.run(gw.gateway.refresh_keys())
    url = gw.base_url + "/chat/completions"
    bad_bodies = [b"{bad", b"[" * 3000, b"x" * 10_000, b'{"messages": []}']
    for body in bad_bodies:
        r = httpx.post(url, content=body, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", body[:10]
        r = httpx.post(url, content=body, headers={"Authorization": "Bearer halo-wrong"}, timeout=10)
        assert r.status_code == 401
    statuses = [
        httpx.post(url, content=b, headers={"Authorization": f"Bearer {key}"}).status_code for b in bad_bodies
    ]
    assert statuses == [400, 400, 413, 400]


@pytest.mark.slow
def test_metrics_auth(upstream: Any, gateway: Any) -> None:
    up = upstream()
    locked = gateway([up.url], require_keys=True)  # metrics_auth defaults to on
    key = locked.gateway.store.create_key("scraper").secret
    locked.run(locked.gateway.refresh_keys())
    r = httpx.get(locked.url + "/metrics")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(locked.url + "/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    r = httpx.get(locked.url + "/metrics", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200 and "halo_gateway_requests_total" in r.text
    assert httpx.get(locked.url + "/health").status_code == 200, "health stays open for probes"
    opened = gateway([up.url], require_keys=True, metrics_auth=False)
    assert httpx.get(opened.url + "/metrics").status_code == 200
    keyless = gateway([up.url])  # no keys required: nothing to check /metrics against
    assert httpx.get(keyless.url + "/metrics").status_code == 200


def _send(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


@pytest.mark.process
def test_oversized_headers_never_put_the_key_in_the_log(upstream: Any, tmp_path: Path) -> None:
    up = upstream()
    srv = gateway_process(
        ["--backend", up.url, "--keys-db", str(tmp_path / "k.db"), "--log-level", "debug"],
        ready_timeout=60,
    )
    with srv:
        pad = "x" * 9000
        requests = [
            # a header value over aiohttp's 8,190-byte field limit
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}{pad}\r\n"
            "Content-Length: 2\r\n\r\n{}",
            # a request line over the limit, the key in the query
            f"GET /v1/models?api_key={SECRET}{pad} HTTP/1.1\r\nHost: x\r\n\r\n",
            # a header name with a control character, then the key
            f"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-\x01: {SECRET}\r\n\r\n",
        ]
        for raw in requests:
            reply = _send(srv.port, raw.encode())
            assert reply.startswith(b"HTTP/1.") and b" 200 " not in reply.split(b"\r\n", 1)[0]
        # a request that works still works, with the key sent as usual
        r = httpx.get(srv.url + "/v1/models", headers={"Authorization": f"Bearer {SECRET}"})
        assert r.status_code == 200
        deadline = time.monotonic() + 10
        # one line per refused request, from the connection guard (431/414/400) or, for what reaches
        # aiohttp's own parser, from ServerLog
        while len(re.findall(r"rejected a (?:malformed )?request from", srv.log_path.read_text())) < 3:
            assert time.monotonic() < deadline, srv.log_tail()
            time.sleep(0.1)
        srv.stop()
        log = srv.log_path.read_text(errors="replace")
    assert "SECRETSECRET" not in log and "Traceback" not in log, log[-3000:]


def test_access_log_bounds_the_model_name(
    upstream: Any, gateway: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    gw = gateway([upstream().url], access_log=True)
    r = chat(gw, {"model": "m" * 100_000, "messages": MSG})
    assert r.status_code == 404
    gw.call(gw.gateway._flush_log)  # otherwise written within a second
    entries = [json.loads(line) for line in capfd.readouterr().err.splitlines() if '"path"' in line]
    assert [(e["status"], e["model"]) for e in entries] == [(404, "m" * 128)]
