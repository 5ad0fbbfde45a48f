"""The gateway against fake upstreams: routing, errors, usage, failover, ejection, queueing, cancellation."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import httpx
import openai
import pytest

from haloserve.protocol import sse
from tests.gateway.conftest import BOTH_LINE_ENDS, MakeGateway, MakeUpstream

MSG = [{"role": "user", "content": "hello there"}]


def wait_for(cond, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.mark.slow
def test_routes_by_model_and_lists_the_union(make_upstream: MakeUpstream, make_gateway: MakeGateway) -> None:
    a = make_upstream(models=["alpha"])
    b = make_upstream(models=["alpha", "beta"])
    gw = make_gateway([a.url, b.url], policy="round-robin")
    client = gw.client()
    assert sorted(m.id for m in client.models.list()) == ["alpha", "beta"]
    assert client.models.retrieve("beta").id == "beta"
    for _ in range(6):
        client.chat.completions.create(model="beta", messages=MSG)
    assert a.stats.by_path.get("/v1/chat/completions", 0) == 0
    assert b.stats.by_path["/v1/chat/completions"] == 6
    for _ in range(10):
        client.completions.create(model="alpha", prompt="x y z")
    assert a.stats.by_path.get("/v1/completions", 0) > 0 and b.stats.by_path.get("/v1/completions", 0) > 0


@pytest.mark.slow
def test_openai_shaped_errors(make_upstream: MakeUpstream, make_gateway: MakeGateway) -> None:
    up = make_upstream()
    gw = make_gateway([up.url], max_body_bytes=2048)
    client = gw.client()
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="nope", messages=MSG)
    assert nf.value.code == "model_not_found"
    r = httpx.post(
        gw.base_url + "/chat/completions", content=b"x" * 4096, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = httpx.post(gw.base_url + "/chat/completions", content=b"{bad")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(gw.base_url + "/chat/completions", json={"messages": MSG})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = httpx.get(gw.url + "/nowhere")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


@BOTH_LINE_ENDS
def test_stream_usage_injected_stripped_and_counted(
    make_upstream: MakeUpstream, make_gateway: MakeGateway, line_end: str
) -> None:
    up = make_upstream(line_end=line_end)
    gw = make_gateway([up.url])
    client = gw.client()
    chunks = list(client.chat.completions.create(model="fake-model", messages=MSG, stream=True, max_tokens=5))
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks).split() == [
        "lorem",
        "ipsum",
        "dolor",
        "sit",
        "amet",
    ]
    asked = list(
        client.chat.completions.create(
            model="fake-model",
            messages=MSG,
            stream=True,
            max_tokens=5,
            stream_options={"include_usage": True},
        )
    )
    assert asked[-1].usage is not None and asked[-1].usage.completion_tokens == 5
    gw.run(gw.gateway.flush_usage())
    rows = gw.gateway.store.usage()
    assert [(r.key_id, r.model, r.requests, r.prompt_tokens, r.completion_tokens) for r in rows] == [
        ("-", "fake-model", 2, 4, 10)
    ]


@BOTH_LINE_ENDS
def test_failover_before_first_byte(
    make_upstream: MakeUpstream, make_gateway: MakeGateway, line_end: str
) -> None:
    bad = make_upstream(drop_rate=1.0)
    erring = make_upstream(error_rate=1.0, error_status=503)
    good = make_upstream(line_end=line_end)
    gw = make_gateway([bad.url, erring.url, good.url], policy="round-robin", retries=2, eject_failures=100)
    client = gw.client()
    for stream in (False, True) * 5:
        r = client.chat.completions.create(model="fake-model", messages=MSG, stream=stream, max_tokens=3)
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in r if c.choices)  # type: ignore[union-attr]
            assert len(text.split()) == 3
    assert good.stats.by_path["/v1/chat/completions"] == 10
    assert bad.stats.injected["drop"] > 0 and erring.stats.injected["error"] > 0


@BOTH_LINE_ENDS
@pytest.mark.slow
def test_mid_stream_failure_ends_with_one_error_event(
    make_upstream: MakeUpstream, make_gateway: MakeGateway, line_end: str
) -> None:
    up = make_upstream(cut_rate=1.0, cut_after_tokens=2, itl_ms=5, line_end=line_end)
    gw = make_gateway([up.url])
    with httpx.stream(
        "POST",
        gw.base_url + "/chat/completions",
        json={"model": "fake-model", "messages": MSG, "stream": True, "max_tokens": 8},
    ) as r:
        events = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert r.status_code == 200
    errors = [json.loads(e[6:]) for e in events if '"error"' in e]
    assert len(errors) == 1 and errors[0]["error"]["type"] == "server_error"
    assert events[-1] == "data: " + json.dumps(errors[0]) or '"error"' in events[-1]
    with pytest.raises(openai.APIError):
        list(gw.client().chat.completions.create(model="fake-model", messages=MSG, stream=True))


@pytest.mark.slow
def test_ejection_and_return(make_upstream: MakeUpstream, make_gateway: MakeGateway) -> None:
    flaky = make_upstream(error_rate=1.0, error_status=500)
    good = make_upstream()
    gw = make_gateway(
        [flaky.url, good.url], policy="round-robin", eject_failures=2, eject_time=0.5, retries=1
    )
    client = gw.client()
    for _ in range(6):
        client.chat.completions.create(model="fake-model", messages=MSG)
    b = gw.call(lambda: gw.gateway.pool.backends[0])
    assert b.ejections >= 1

    def chats() -> int:
        return flaky.stats.by_path.get("/v1/chat/completions", 0)

    before = chats()
    for _ in range(4):
        client.chat.completions.create(model="fake-model", messages=MSG)
    assert chats() == before, "an ejected backend gets no traffic"
    flaky.configure(error_rate=0.0)
    wait_for(lambda: gw.call(lambda: b.state) == "closed" and b.healthy)
    for _ in range(30):
        client.chat.completions.create(model="fake-model", messages=MSG)
    assert chats() > before, "it takes traffic again after it recovered"
    metrics = httpx.get(gw.url + "/metrics").text
    assert "halo_gateway_backend_ejections_total" in metrics


def test_no_healthy_backend_is_503_with_retry_after(
    make_upstream: MakeUpstream, make_gateway: MakeGateway
) -> None:
    up = make_upstream()
    gw = make_gateway([up.url])
    gw.call(lambda: gw.gateway.pool.backends[0].failed(fatal=True))
    r = httpx.post(gw.base_url + "/chat/completions", json={"model": "fake-model", "messages": MSG})
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
    assert httpx.get(gw.url + "/ready").status_code == 200  # probes still see it up


@pytest.mark.slow
def test_queue_then_429_when_full_and_on_timeout(
    make_upstream: MakeUpstream, make_gateway: MakeGateway
) -> None:
    up = make_upstream(ttft_ms=400)
    # probes count as in-flight requests at the fake: keep them out of the way
    gw = make_gateway([f"{up.url},max_concurrency=1"], queue_size=1, queue_timeout=5, health_interval=60)
    up.reset()
    body = {"model": "fake-model", "messages": MSG, "max_tokens": 1}
    results: list[int] = []

    def call() -> None:
        results.append(httpx.post(gw.base_url + "/chat/completions", json=body, timeout=10).status_code)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    wait_for(lambda: gw.call(lambda: gw.gateway.pool.queue_depth()) == 1)
    r = httpx.post(gw.base_url + "/chat/completions", json=body)
    assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full" and "Retry-After" in r.headers
    for t in threads:
        t.join()
    assert results == [200, 200] and up.stats.max_in_flight == 1
    gw2 = make_gateway([f"{up.url},max_concurrency=1"], queue_size=4, queue_timeout=0.1)
    threads = [threading.Thread(target=lambda: httpx.post(gw2.base_url + "/chat/completions", json=body))]
    threads[0].start()
    wait_for(lambda: gw2.call(lambda: gw2.gateway.pool.backends[0].in_flight) == 1)
    r = httpx.post(gw2.base_url + "/chat/completions", json=body)
    assert r.status_code == 429 and r.json()["error"]["code"] == "queue_timeout"
    threads[0].join()


@BOTH_LINE_ENDS
@pytest.mark.slow
def test_client_disconnect_cancels_upstream(
    make_upstream: MakeUpstream, make_gateway: MakeGateway, line_end: str
) -> None:
    up = make_upstream(ttft_ms=50, itl_ms=50, line_end=line_end)
    gw = make_gateway([up.url])
    body = {"model": "fake-model", "messages": MSG, "max_tokens": 200}
    with httpx.stream("POST", gw.base_url + "/chat/completions", json={**body, "stream": True}) as r:
        next(r.iter_lines())
    wait_for(lambda: up.stats.cancelled == 1)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gw.base_url + "/chat/completions", json=body, timeout=0.3)
    wait_for(lambda: up.stats.cancelled == 2)
    assert up.stats.in_flight == 0
    wait_for(lambda: gw.call(lambda: gw.gateway.pool.backends[0].in_flight) == 0)


@pytest.mark.slow
def test_reload_under_load(make_upstream: MakeUpstream, make_gateway: MakeGateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    a = make_upstream(itl_ms=2)
    b = make_upstream(itl_ms=2)
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(f"backends:\n  - url: {a.url}\n")
    gw = make_gateway([a.url], config_path=cfg)
    stop = threading.Event()
    failures: list[str] = []

    def load() -> None:
        client = gw.client()
        while not stop.is_set():
            try:
                list(
                    client.chat.completions.create(
                        model="fake-model", messages=MSG, stream=True, max_tokens=5
                    )
                )
            except Exception as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    cfg.write_text(f"policy: round-robin\nbackends:\n  - url: {b.url}\n")
    assert gw.run(gw.gateway.reload_now())
    wait_for(lambda: b.stats.completed > 5)
    a_done = a.stats.completed
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    assert not failures
    assert a.stats.completed == a_done and a.stats.in_flight == 0
    cfg.write_text("backends: [{url: 5}]\nport: nope\n")
    assert gw.run(gw.gateway.reload_now()) is False, "a bad file keeps the running config"


def _raw_post(
    url: str, body: bytes, version: str = "1.1", before_read: Callable[[], object] | None = None
) -> bytes:
    """POST over a plain socket and read the whole reply (until the server closes), optionally late."""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(
            f"POST /v1/chat/completions HTTP/{version}\r\nHost: {u.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        if before_read is not None:
            before_read()
        parts = []
        while data := s.recv(1 << 16):
            parts.append(data)
    return b"".join(parts)


@BOTH_LINE_ENDS
def test_http10_clients_get_an_unchunked_stream(
    make_upstream: MakeUpstream, make_gateway: MakeGateway, line_end: str
) -> None:
    up = make_upstream(line_end=line_end)
    gw = make_gateway([up.url])
    body = json.dumps({"model": "fake-model", "messages": MSG, "stream": True, "max_tokens": 4}).encode()
    reply = _raw_post(gw.url, body, version="1.0")
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and b"chunked" not in head.lower()
    decoder = sse.Decoder()
    events = decoder.feed(payload) + decoder.close()
    assert events[-1].done and all(e.event == "message" for e in events)
    assert len(events) == 1 + 4 + 1 + 1  # role, four tokens, finish, [DONE] (usage stripped)
    assert all(e.json()["choices"] for e in events[:-1])
    eol = b"\r\n" if line_end == "crlf" else b"\n"
    assert payload.endswith(b"data: [DONE]" + eol + eol)  # relayed as the backend wrote it


@BOTH_LINE_ENDS
@pytest.mark.slow
def test_stream_chunks_arrive_as_they_are_sent(
    make_upstream: MakeUpstream, make_gateway: MakeGateway, line_end: str
) -> None:
    # Issue 12.5: with CRLF separators the gateway held the whole stream and sent its 5 chunks over
    # 2.5 s in one read at the end. Each chunk must reach the client when the backend sends it.
    up = make_upstream(ttft_ms=100, itl_ms=500, line_end=line_end)
    gw = make_gateway([up.url])
    body = {"model": "fake-model", "messages": MSG, "stream": True, "max_tokens": 5}
    arrivals: list[float] = []
    decoder = sse.Decoder()
    start = time.monotonic()
    with httpx.stream("POST", gw.base_url + "/chat/completions", json=body, timeout=30) as r:
        for piece in r.iter_raw():
            for event in decoder.feed(piece):
                if not event.done and event.json()["choices"][0]["delta"].get("content"):
                    arrivals.append(time.monotonic() - start)
    assert len(arrivals) == 5
    # sent at 0.1, 0.6, 1.1, 1.6 and 2.1 s: the first must not wait for the last
    assert arrivals[-1] - arrivals[0] > 1.0 and arrivals[-1] - arrivals[1] > 0.5, arrivals


@BOTH_LINE_ENDS
@pytest.mark.slow
def test_a_slow_client_holds_the_backend_back(
    make_upstream: MakeUpstream, make_gateway: MakeGateway, line_end: str
) -> None:
    # 120,000 chunks of ~230 bytes (~28 MB) as fast as the fake can write them, to a client that reads
    # nothing at first: once the socket buffers between them are full, the gateway stops reading the
    # backend (whose writes then block) instead of buffering the rest of the stream in memory. The
    # client starts reading once the backend stalled (or finished: then the gateway buffered it all).
    up = make_upstream(itl_ms=0, ttft_ms=0, line_end=line_end)
    gw = make_gateway([up.url], request_timeout=120)
    n = 120_000
    body = json.dumps({"model": "fake-model", "messages": MSG, "stream": True, "max_tokens": n}).encode()
    sent: list[int] = []

    def until_stalled() -> None:  # samples every 0.25 s; stalled: < 100 tokens in the last second
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            sent.append(up.stats.tokens_sent)
            if sent[-1] >= n or (len(sent) >= 5 and sent[-1] - sent[-5] < 100 and sent[-1] > 0):
                return
            time.sleep(0.25)

    reply = _raw_post(gw.url, body, before_read=until_stalled)
    assert reply.count(b"data: ") == 1 + n + 1 + 1 and reply.rstrip().endswith(b"0")  # all of it, chunked
    assert sent[-1] < n and sent[-1] - sent[-5] < 100, sent  # stalled with the client, not finished
