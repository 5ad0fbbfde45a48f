"""Hostile request content against a real `halo serve` app (issue 13, items 1, 7 and 10).

Content the client controls must never cost a 5xx, a dropped keep-alive connection, a leak of internal
state or a stall of other clients' streams. The app runs in this process on a real loopback socket
(uvicorn in a thread) with the real llama.cpp engine and the bundled model; the stall test runs the
real `halo serve` process.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haloserve.cli.serve import build_engine
from haloserve.config.serve import ServeSettings
from haloserve.protocol.openai import MAX_NESTING
from haloserve.server.app import create_app
from haloserve.testing.inproc import InProcessServer
from haloserve.testing.remote import RemoteServer

KEY = "sk-adversarial-test-key"


def assert_error(r: httpx.Response, status: int, param: str | None = "?") -> dict[str, Any]:
    """An OpenAI-shaped error with ``status`` (and ``param`` when given)."""
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param != "?":
        assert err["param"] == param, err
    return err


@pytest.fixture(scope="module")
def real(model_path: Path) -> Iterator[InProcessServer]:
    """The real engine with the bundled model, tiny slots and --n-predict 2 so generation ends at once."""
    s = ServeSettings(model=model_path, parallel=2, ctx_size=2048, threads=2, n_predict=2)
    with InProcessServer(create_app(s, build_engine(s)), timeout=120) as srv:
        yield srv


def _http(sock: socket.socket, path: str, body: bytes) -> tuple[int, bytes, dict[str, str]]:
    """One HTTP/1.1 request on an open socket; the response's status, body and headers."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        buf += chunk
    raw_head, rest = buf.split(b"\r\n\r\n", 1)
    lines = raw_head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        rest += chunk
    return int(lines[0].split()[1]), rest[:length], headers


SURROGATE = "\ud800"
# (path, body, the param the 400 must name): every string field a client sends in the list.
SURROGATE_CASES = [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": SURROGATE}]}, "messages.0.content"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "a" + SURROGATE}]}]},
        "messages.0.content.0.text",
    ),
    ("/v1/completions", {"prompt": SURROGATE}, "prompt"),
    ("/v1/completions", {"prompt": "hi", "model": SURROGATE}, "model"),
    ("/v1/completions", {"prompt": "hi", "stop": ["x", SURROGATE]}, "stop.1"),
    (
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f", "description": SURROGATE}}],
        },
        "tools.0.function.description",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "chat_template_kwargs": {SURROGATE: 1}},
        "chat_template_kwargs",
    ),
    ("/tokenize", {"content": SURROGATE}, "content"),
]


@pytest.mark.model
def test_lone_surrogates_are_400_naming_the_field_and_keep_the_connection(real: InProcessServer) -> None:
    """Was: 500 UnicodeEncodeError, two tracebacks, and the keep-alive connection dropped."""
    with socket.create_connection(("127.0.0.1", real.port), timeout=60) as sock:
        for path, body, param in SURROGATE_CASES:
            # json.dumps escapes the surrogate as \ud800, exactly what a hostile client sends
            status, raw, _ = _http(sock, path, json.dumps({**body, "max_tokens": 1}).encode())
            assert status == 400, (path, raw[:300])
            err = json.loads(raw)["error"]
            assert err["type"] == "invalid_request_error" and err["param"] == param, err
            assert "valid Unicode" in err["message"]
        # the same connection still serves a good request
        ok = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        status, raw, _ = _http(sock, "/v1/chat/completions", json.dumps(ok).encode())
        assert status == 200, raw[:300]


RECURSIVE_REQUIRED = {
    "type": "json_schema",
    "json_schema": {
        "name": "loop",
        "strict": True,
        "schema": {
            "$defs": {"n": {"type": "object", "properties": {"c": {"$ref": "#/$defs/n"}}, "required": ["c"]}},
            "$ref": "#/$defs/n",
        },
    },
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.model
def test_unsatisfiable_recursive_schema_is_400_without_parser_state(
    real: InProcessServer, stream: bool
) -> None:
    """Was: 500 "grammar matcher failed" followed by kilobytes of llguidance's parser state."""
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8,
        "stream": stream,
        "response_format": RECURSIVE_REQUIRED,
    }
    r = httpx.post(real.url + "/v1/chat/completions", json=body, timeout=120)
    if r.status_code == 200:  # the failure came after the stream started: one error event, then the end
        assert stream
        events = [ln[6:] for ln in r.text.splitlines() if ln.startswith("data: ")]
        err = json.loads(events[-1])["error"]
        assert err["param"] == "response_format" and err["type"] == "invalid_request_error"
    else:
        err = assert_error(r, 400, "response_format")
    assert err["type"] == "invalid_request_error"
    assert "<state>" not in err["message"] and "Parser" not in err["message"]
    assert len(err["message"]) < 400, err["message"]


@pytest.mark.model
def test_deep_nesting_is_400_not_a_recursion_error(real: InProcessServer) -> None:
    deep: Any = "x"
    for _ in range(MAX_NESTING + 5):
        deep = {"a": deep}
    cases = [
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "chat_template_kwargs": deep},
        ),
        (
            "/v1/chat/completions",
            {
                "messages": [{"role": "user", "content": "hi"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "d", "schema": deep}},
            },
        ),
        ("/tokenize", {"content": "hi", "x": deep}),
    ]
    for path, body in cases:
        err = assert_error(httpx.post(real.url + path, json=body, timeout=60), 400)
        assert "nested deeper" in err["message"]
    # beyond what Python's own JSON parser can nest
    for path in ("/v1/chat/completions", "/v1/completions", "/tokenize"):
        assert_error(httpx.post(real.url + path, content="[" * 100_000 + "]" * 100_000, timeout=60), 400)


# -- property-based fuzzing: strings from the whole Unicode range, surrogates and controls included ----
ANY_CHAR = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
TEXT = st.text(ANY_CHAR, max_size=40)
ODD = st.one_of(
    TEXT, st.sampled_from(["\ud800", "\udfff", "\x00", "\x1b[31m", "\u202e", "{{ x }}", "<|im_end|>"])
)
MODEL = st.one_of(st.just(""), ODD)
ROLE = st.sampled_from(["system", "user", "assistant", "tool", "developer"])


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    return False


@st.composite
def chat_bodies(draw: st.DrawFn) -> dict[str, Any]:
    msgs = [
        {
            "role": draw(ROLE),
            "content": draw(
                st.one_of(
                    ODD, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": ODD}), max_size=2)
                )
            ),
        }
        for _ in range(draw(st.integers(1, 3)))
    ]
    body: dict[str, Any] = {"model": draw(MODEL), "messages": msgs, "max_tokens": draw(st.integers(1, 2))}
    if draw(st.booleans()):
        body["messages"][0]["name"] = draw(ODD)
    if draw(st.booleans()):
        body["stop"] = draw(st.lists(ODD, min_size=1, max_size=2))
    if draw(st.booleans()):
        body["user"] = draw(ODD)
    if draw(st.booleans()):
        props = {draw(ODD): {"type": "string", "description": draw(ODD)}}
        fn = {
            "name": draw(ODD),
            "description": draw(ODD),
            "parameters": {"type": "object", "properties": props},
        }
        body["tools"] = [{"type": "function", "function": fn}]
        body["tool_choice"] = draw(st.sampled_from(["auto", "none", "required"]))
    if draw(st.booleans()):
        schema = {"type": "object", "properties": {draw(ODD): {"type": "string", "enum": [draw(ODD)]}}}
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": draw(ODD), "schema": schema},
        }
    body["stream"] = draw(st.booleans())
    return body


@st.composite
def completion_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": draw(MODEL),
        "prompt": draw(st.one_of(ODD, st.lists(ODD, min_size=1, max_size=2))),
    }
    body["max_tokens"] = draw(st.integers(1, 2))
    if draw(st.booleans()):
        body["stop"] = draw(st.one_of(ODD, st.lists(ODD, max_size=2)))
    body["echo"] = draw(st.booleans())
    body["stream"] = draw(st.booleans())
    return body


REQUESTS = st.one_of(
    st.tuples(st.just("/v1/chat/completions"), chat_bodies()),
    st.tuples(st.just("/v1/completions"), completion_bodies()),
    st.tuples(st.just("/tokenize"), st.fixed_dictionaries({"content": ODD, "add_special": st.booleans()})),
    st.tuples(
        st.just("/detokenize"),
        st.fixed_dictionaries({"tokens": st.lists(st.integers(-5, 60000), max_size=5)}),
    ),
)


@pytest.mark.model
def test_fuzz_request_strings_never_5xx(real: InProcessServer) -> None:
    """Every string field drawn from all of Unicode: never a 5xx, errors in OpenAI shape, server lives."""
    with httpx.Client(base_url=real.url, timeout=120) as client:

        @given(req=REQUESTS)
        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(req: tuple[str, dict[str, Any]]) -> None:
            path, body = req
            # ensure_ascii: surrogates travel as \udXXX escapes, the way JSON lets a client send them
            r = client.post(
                path, content=json.dumps(body).encode(), headers={"content-type": "application/json"}
            )
            assert r.status_code < 500, (path, body, r.text[:500])
            if r.status_code >= 400:
                err = assert_error(r, r.status_code)
                if _has_surrogate(body):
                    assert r.status_code == 400 and "valid Unicode" in err["message"], err
            elif body.get("stream"):
                assert r.text.rstrip().endswith("data: [DONE]") or '"error"' in r.text.splitlines()[-2], (
                    r.text[-300:]
                )

        check()
        assert client.get("/health").status_code == 200
        ok = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 2})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1


# -- item 10: 413 for chunked bodies, 401 before the body is judged, /metrics behind the key ---------
@pytest.fixture(scope="module")
def keyed() -> Iterator[InProcessServer]:
    """The fake engine (the HTTP layer is what is tested) behind an API key, default --metrics-auth."""
    s = ServeSettings(engine="fake", api_key=[KEY], max_body_bytes=4096)
    with InProcessServer(create_app(s, build_engine(s)), wait_healthy=True) as srv:
        yield srv


def test_chunked_body_over_the_limit_is_413(keyed: InProcessServer) -> None:
    """Was 400: the limit raised inside FastAPI's body parsing, which reported a malformed body."""

    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    r = httpx.post(keyed.url + "/v1/completions", content=chunks(), headers=auth, timeout=30)
    assert "content-length" not in r.request.headers  # really sent chunked
    assert_error(r, 413)
    small = httpx.post(keyed.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}, headers=auth)
    assert small.status_code == 200


def test_authentication_comes_before_body_validation(keyed: InProcessServer) -> None:
    """Was: an invalid body got 400 before the missing key got 401."""
    for body in (b"{not json", b'{"prompt": "\\ud800"}', b"x" * 10_000):
        r = httpx.post(
            keyed.url + "/v1/completions", content=body, headers={"content-type": "application/json"}
        )
        assert_error(r, 401)
        wrong = httpx.post(
            keyed.url + "/v1/completions", content=body, headers={"Authorization": "Bearer nope"}
        )
        assert_error(wrong, 401)
    r = httpx.post(
        keyed.url + "/v1/completions", content=b"{not json", headers={"Authorization": f"Bearer {KEY}"}
    )
    assert_error(r, 400)
    assert httpx.get(keyed.url + "/health").status_code == 200  # readiness stays open for load balancers
    assert_error(httpx.get(keyed.url + "/no/such/route"), 401)  # nothing is learnt without the key


def test_metrics_needs_the_key_by_default(keyed: InProcessServer) -> None:
    assert_error(httpx.get(keyed.url + "/metrics"), 401)
    r = httpx.get(keyed.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and "# TYPE" in r.text


def test_metrics_open_with_no_metrics_auth() -> None:
    s = ServeSettings(engine="fake", api_key=[KEY], metrics_auth=False)
    with InProcessServer(create_app(s, build_engine(s))) as srv:
        assert httpx.get(srv.url + "/metrics").status_code == 200
        assert_error(httpx.get(srv.url + "/v1/models"), 401)  # only /metrics is opened


# -- item 7: a huge request must not stall the other streams ---------------------------------------
def _loop_cpu_seconds(pid: int) -> float:
    """CPU time of the process's main thread, where uvicorn runs the event loop (Linux /proc)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.mark.model
def test_huge_requests_do_not_stall_other_streams() -> None:
    """Was: a 7 MB prompt or 10,000 messages froze every stream for ~2.3 s before its 400.

    A stream runs while two 7 MB prompts and two 10,000-message chats are sent. Asserted: the CPU time
    the event loop's thread spends meanwhile (immune to the load of a shared machine; the old code spent
    seconds there), and, generously, the largest gap between the stream's chunks. Both are printed."""
    big_prompt = json.dumps({"prompt": "word " * 1_400_000, "max_tokens": 1}).encode()  # 7 MB
    many = json.dumps({"messages": [{"role": "user", "content": "hi"}] * 10_000, "max_tokens": 1}).encode()
    arrivals: list[float] = []
    flowing = threading.Event()

    with RemoteServer(["--parallel", "2", "--ctx-size", "4096", "--threads", "2"]) as srv:
        assert srv.proc is not None

        def stream() -> None:
            body = {"prompt": "Once upon a time", "max_tokens": 1000, "ignore_eos": True, "stream": True}
            with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=300) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        arrivals.append(time.monotonic())
                        if len(arrivals) == 40:
                            flowing.set()
                    if window and time.monotonic() > window[-1] + 0.5:
                        return  # seen enough after the huge requests

        window: list[float] = []
        t = threading.Thread(target=stream)
        t.start()
        assert flowing.wait(180), "the stream never started"
        statuses = []
        cpu0 = _loop_cpu_seconds(srv.proc.pid)
        window.append(time.monotonic())
        with httpx.Client(timeout=300) as c:
            for path, body in (("/v1/completions", big_prompt), ("/v1/chat/completions", many)) * 2:
                r = c.post(srv.url + path, content=body, headers={"content-type": "application/json"})
                statuses.append(r.status_code)
        window.append(time.monotonic())
        loop_cpu = _loop_cpu_seconds(srv.proc.pid) - cpu0
        t.join(300)
    gaps_during = [b - a for a, b in itertools.pairwise(arrivals) if window[0] <= b <= window[1] + 0.5]
    gaps_before = [b - a for a, b in itertools.pairwise(arrivals[20:40])]
    gap, before = max(gaps_during, default=0.0), max(gaps_before, default=0.0)
    print(
        f"\nhuge requests: event-loop CPU {loop_cpu:.2f}s over {window[1] - window[0]:.2f}s; largest chunk "
        f"gap {gap:.3f}s (before them: {before:.3f}s)"
    )
    assert statuses == [400, 400, 400, 400]
    assert len(gaps_during) >= 1, "the stream stopped while the huge requests were handled"
    assert loop_cpu < 1.5, f"the event loop's thread worked {loop_cpu:.2f}s on 4 refused requests"
    assert gap < max(2.0, 4 * before), f"a stream stalled {gap:.2f}s (largest gap before: {before:.3f}s)"
