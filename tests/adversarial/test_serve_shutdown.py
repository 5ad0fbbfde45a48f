"""SIGTERM with long streams and a queue (issue 13, item 6), against the real `halo serve` process.

Was: streams outliving --shutdown-timeout were cut mid-body with no error event, and queued requests
waited the whole timeout for a text/plain 500. Now queued requests get 503 (OpenAI shape, Retry-After)
as soon as shutdown begins, and a stream still running at the deadline gets one SSE error event and a
proper end of its body.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import httpx
import pytest

from haloserve.testing.remote import RemoteServer

pytestmark = pytest.mark.model

TIMEOUT = 6.0  # --shutdown-timeout


def test_sigterm_ends_queued_requests_at_once_and_running_streams_with_an_error_event() -> None:
    srv = RemoteServer(
        ["--parallel", "1", "--ctx-size", "4096", "--threads", "2", "--shutdown-timeout", str(TIMEOUT)]
    )
    srv.start()
    events: list[str] = []
    flowing = threading.Event()
    stream_error: list[BaseException] = []
    queued: dict[str, Any] = {}

    def long_stream() -> None:
        body = {"prompt": "Once upon a time", "max_tokens": 4000, "ignore_eos": True, "stream": True}
        try:
            with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=120) as r:
                assert r.status_code == 200
                for line in r.iter_lines():  # raises if the body is cut without its proper end
                    if line.startswith("data: "):
                        events.append(line[6:])
                        if len(events) == 3:
                            flowing.set()
        except BaseException as exc:  # reported to the test thread
            stream_error.append(exc)
            flowing.set()

    def queued_request(name: str, stream: bool) -> None:
        body = {"prompt": "Hello", "max_tokens": 8, "stream": stream}
        try:
            r = httpx.post(srv.url + "/v1/completions", json=body, timeout=120)
            queued[name] = (r, time.monotonic())
        except BaseException as exc:
            queued[name] = (exc, time.monotonic())

    try:
        runner = threading.Thread(target=long_stream)
        runner.start()
        assert flowing.wait(120) and not stream_error, stream_error
        waiters = [
            threading.Thread(target=queued_request, args=(name, name == "stream"))
            for name in ("plain", "stream")
        ]
        for w in waiters:
            w.start()
        deadline = time.monotonic() + 30
        while httpx.get(srv.url + "/health", timeout=10).json().get("queue_depth", 0) < 2:
            assert time.monotonic() < deadline, "the two requests never queued behind the stream"
            time.sleep(0.05)
        assert srv.proc is not None
        sent = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        for w in waiters:
            w.join(60)
        runner.join(60)
        code = srv.proc.wait(60)
    finally:
        srv.stop()
    # queued: 503 in OpenAI shape with Retry-After, long before the deadline
    for name in ("plain", "stream"):
        r, when = queued[name]
        assert isinstance(r, httpx.Response), r
        assert r.status_code == 503, (name, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/json")
        assert int(r.headers["retry-after"]) >= 1
        err = r.json()["error"]
        assert err["type"] == "service_unavailable" and "shutting down" in err["message"]
        assert when - sent < TIMEOUT / 2, f"{name}: answered {when - sent:.1f}s after SIGTERM"
    # running: a complete body whose last event is one OpenAI error
    assert not stream_error, f"the stream's body was cut: {stream_error[0]!r}"
    assert len(events) > 3
    last = json.loads(events[-1])
    assert set(last["error"]) == {"message", "type", "param", "code"}
    assert last["error"]["type"] == "service_unavailable" and "shutdown-timeout" in last["error"]["message"]
    assert sum('"error"' in e for e in events) == 1
    assert code == 0, srv.log_tail()
