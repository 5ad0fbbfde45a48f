"""Hostile connections against real ``halo serve`` (bundled model) and ``halo gateway`` (fake upstream).

Issue 13 item 3: unbounded request heads, slow heads and bodies, idle sockets and descriptor
exhaustion. Every test talks to a real server process on loopback with raw sockets (to misbehave)
and the official ``openai`` client (to be the real client that must still be served). Each test is
bounded in sockets and seconds; timeouts are set low (3 s) so the waits stay short.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from haloserve.errors import ConfigError
from haloserve.protocol.connlimits import (
    AUTO_CAP_MAX,
    ConnTable,
    available_connections,
    canned_response,
    connection_cap,
)
from haloserve.testing.gateway import gateway_process
from haloserve.testing.remote import RemoteServer
from haloserve.testing.upstream import serve_in_thread
from haloserve.testing.upstream_config import UpstreamConfig

TIMEOUT = 3.0  # head, body and keep-alive timeouts of the servers under test
CAP = 20
LIMIT_FLAGS = [
    "--header-timeout", str(TIMEOUT), "--body-timeout", str(TIMEOUT),
    "--keepalive-timeout", str(TIMEOUT), "--max-connections", str(CAP),
]  # fmt: skip
SERVE_FLAGS = ["--parallel", "2", "--ctx-size", "2048", "--threads", "2"]


@dataclass
class Target:
    """A running server under test and what a real client needs to call it."""

    name: str
    server: RemoteServer
    model: str

    @property
    def port(self) -> int:
        """Its loopback port."""
        return self.server.port

    def rss(self) -> int:
        """Resident memory of the server process in bytes."""
        assert self.server.proc is not None
        for line in Path(f"/proc/{self.server.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def chat(self) -> str:
        """One real request through the official client (the client a user would have)."""
        client = self.server.client(timeout=30.0)
        out = client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        return str(out.choices[0].finish_reason)


@pytest.fixture(scope="module", params=["serve", "gateway"])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """``halo serve`` with the bundled model, or ``halo gateway`` in front of a fake upstream."""
    with ExitStack() as stack:
        if request.param == "serve":
            srv = stack.enter_context(RemoteServer([*SERVE_FLAGS, *LIMIT_FLAGS]))
            model = srv.client().models.list().data[0].id
        else:
            up = stack.enter_context(serve_in_thread(UpstreamConfig(models=["m"])))
            db = tmp_path_factory.mktemp("gw") / "gateway.db"
            args = ["--backend", up.url, "--keys-db", str(db), "--no-access-log", *LIMIT_FLAGS]
            srv = stack.enter_context(gateway_process(args))
            model = "m"
        yield Target(request.param, srv, model)


# Raw-socket helpers
def connect(port: int) -> socket.socket:
    """A plain TCP connection to the server."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.settimeout(10)
    return s


def read_response(s: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one response (status 0: closed before any answer)."""
    s.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                return 0, {}, data
            data += chunk
    except OSError:
        return 0, {}, data
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    want = int(headers.get("content-length", "0"))
    try:
        while len(body) < want:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
    except OSError:
        pass
    return int(lines[0].split()[1]), headers, body


def closed_within(s: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed ``s`` (reading and dropping what it sends), None if it did not."""
    start = time.monotonic()
    s.settimeout(0.2)
    while time.monotonic() - start < seconds:
        try:
            if not s.recv(65536):
                return time.monotonic() - start
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - start
    return None


def error_code(body: bytes) -> str:
    """The ``error.code`` of an OpenAI-shaped error body."""
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return str(err["code"])


def flood_head(port: int, size: int, line: bytes) -> int:
    """Send a request head of ``size`` bytes made of ``line`` repeated; the status that came back.

    A reader thread takes the answer as soon as it comes, so an early 431 is seen even while we
    are still writing.
    """
    s = connect(port)
    answer: list[int] = []
    reader = threading.Thread(target=lambda: answer.append(read_response(s, 60)[0]), daemon=True)
    reader.start()
    chunk = line * max(1, 65536 // len(line))
    sent = 0
    try:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        while sent < size and reader.is_alive():
            s.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass  # the server closed after answering
    reader.join(60)
    s.close()
    return answer[0] if answer else -1


# Request heads
@pytest.mark.model
@pytest.mark.timeout(180)
def test_huge_heads_get_431_and_memory_stays_flat(target: Target) -> None:
    """4 connections x 20 MB of headers: each gets 431 early, the server's RSS grows < 100 MB."""
    before = target.rss()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], target.rss())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    statuses: list[int] = []
    line = b"X-Pad: " + b"a" * 4000 + b"\r\n"  # each line under the per-line limit: the total must catch it
    floods = [
        threading.Thread(target=lambda: statuses.append(flood_head(target.port, 20 << 20, line)))
        for _ in range(4)
    ]
    for t in floods:
        t.start()
    for t in floods:
        t.join(120)
    done.set()
    sampler.join(5)
    assert statuses == [431] * 4
    assert peak[0] - before < 100 << 20, f"RSS grew {(peak[0] - before) >> 20} MB"
    assert target.chat()  # and it still serves


@pytest.mark.model
@pytest.mark.timeout(60)
def test_long_lines_and_heads_are_refused_with_openai_errors(target: Target) -> None:
    """A header line over 8 KiB: 431; a request line over 8 KiB: 414; 70 KiB of small headers: 431."""
    secret = "sk-" + "s" * 9000  # an oversized Authorization header must not reach the log
    auth = b"Authorization: Bearer " + secret.encode() + b"\r\n"
    cases = [
        (b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n", 431),
        (b"GET /v1/models?" + b"q" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET /v1/models HTTP/1.1\r\nHost: x\r\n"
         + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"b" * 1000) for i in range(70)) + b"\r\n", 431),
    ]  # fmt: skip
    for raw, status in cases:
        with closing(connect(target.port)) as s:
            s.sendall(raw)
            got, headers, body = read_response(s)
            assert got == status
            assert headers.get("connection") == "close"
            assert error_code(body) in ("request_header_too_large", "uri_too_long")
            assert closed_within(s, 5) is not None
    assert secret[:20] not in target.server.log_tail(200)
    # a head just under the limits is served
    with closing(connect(target.port)) as s:
        pads = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"c" * 1000) for i in range(50))
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + pads + b"\r\n")
        assert read_response(s)[0] == 200


# Timeouts
@pytest.mark.model
@pytest.mark.timeout(60)
def test_slow_head_is_cut_by_the_header_timeout(target: Target) -> None:
    """A head trickling in one byte per 0.2 s gets 408 and a close after about 3 s, not later."""
    with closing(connect(target.port)) as s:
        start = time.monotonic()
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        got: list[tuple[int, dict[str, str], bytes]] = []
        reader = threading.Thread(target=lambda: got.append(read_response(s, 30)), daemon=True)
        reader.start()
        try:
            for i in range(100):  # 20 s at most
                if not reader.is_alive():
                    break
                s.sendall(b"X-Slow-%d: 1\r\n" % i if i % 10 == 0 else b"x")
                time.sleep(0.2)
        except OSError:
            pass
        reader.join(30)
        elapsed = time.monotonic() - start
    status, headers, body = got[0]
    assert status == 408 and error_code(body) == "request_timeout"
    assert headers.get("connection") == "close"
    assert TIMEOUT * 0.9 < elapsed < TIMEOUT + 8


@pytest.mark.model
@pytest.mark.timeout(60)
def test_short_body_is_cut_by_the_body_timeout(target: Target) -> None:
    """A body that stops short of its Content-Length gets 408 and a close after about 3 s."""
    with closing(connect(target.port)) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"model":'
        )
        start = time.monotonic()
        status, headers, body = read_response(s, 30)
        elapsed = time.monotonic() - start
        assert status == 408 and error_code(body) == "request_timeout"
        assert headers.get("connection") == "close"
        assert TIMEOUT * 0.9 < elapsed < TIMEOUT + 8
        assert closed_within(s, 5) is not None
    assert target.chat()


@pytest.mark.model
@pytest.mark.timeout(60)
def test_idle_connections_are_closed(target: Target) -> None:
    """A kept-alive connection and a connection that never sends are both closed after about 3 s."""
    with closing(connect(target.port)) as kept, closing(connect(target.port)) as silent:
        kept.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(kept)[0] == 200
        idle = closed_within(kept, TIMEOUT + 10)
        assert idle is not None and idle > TIMEOUT * 0.5
        assert closed_within(silent, 10) is not None
    # a keep-alive connection used again before the timeout stays usable
    with closing(connect(target.port)) as s:
        for _ in range(2):
            s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(s)[0] == 200
            time.sleep(TIMEOUT / 4)


# Connection cap
@pytest.mark.model
@pytest.mark.timeout(90)
def test_idle_sockets_do_not_lock_out_a_real_client(target: Target) -> None:
    """60 idle sockets against a cap of 20: a real client is still answered at once."""
    socks = [connect(target.port) for _ in range(3 * CAP)]
    try:
        time.sleep(0.3)
        start = time.monotonic()
        assert target.chat()
        assert time.monotonic() - start < 20
    finally:
        for s in socks:
            s.close()


@pytest.mark.model
@pytest.mark.timeout(90)
def test_slow_sockets_at_the_cap_get_503_then_service(target: Target) -> None:
    """20 sockets busy sending heads fill the cap: a new client gets a clear 503, then service."""
    socks = []
    try:
        start = time.monotonic()
        for _ in range(CAP + 5):
            s = connect(target.port)
            s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")  # a head that never ends
            socks.append(s)
        time.sleep(max(0.2, start + 1.0 - time.monotonic()))  # the server reads every head start first
        assert time.monotonic() - start < TIMEOUT - 0.5, "too slow to open the sockets before the timeout"
        with closing(connect(target.port)) as s:
            s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, body = read_response(s)
        assert status == 503 and headers.get("retry-after") == "1"
        assert headers.get("connection") == "close" and error_code(body) == "service_unavailable"
        # the header timeout reaps the slow ones; then clients get in again
        deadline = time.monotonic() + TIMEOUT + 15
        while time.monotonic() < deadline:
            with closing(connect(target.port)) as s:
                s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
                if read_response(s)[0] == 200:
                    break
            time.sleep(0.5)
        else:
            raise AssertionError("never served after the slow sockets were reaped")
        assert target.chat()
    finally:
        for s in socks:
            s.close()


# Descriptors
def _open_files(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files limit")


@pytest.mark.model
@pytest.mark.timeout(240)
@pytest.mark.parametrize("command", ["serve", "gateway"])
def test_descriptor_limit_holds_against_many_idle_sockets(command: str, tmp_path: Path) -> None:
    """Under a 256-descriptor limit (soft 200), 400 idle sockets leave a real client served.

    The soft limit is raised to the hard one at start, the automatic cap sits below it, and the
    oldest idle sockets are closed to make room: no accept ever fails for lack of descriptors.
    """
    with ExitStack() as stack:
        if command == "serve":
            srv = stack.enter_context(RemoteServer(SERVE_FLAGS, nofile=(200, 256)))
            target = Target("serve", srv, srv.client().models.list().data[0].id)
        else:
            up = stack.enter_context(serve_in_thread(UpstreamConfig(models=["m"])))
            args = ["--backend", up.url, "--keys-db", str(tmp_path / "gw.db"), "--no-access-log"]
            srv = stack.enter_context(gateway_process(args, nofile=(200, 256)))
            target = Target("gateway", srv, "m")
        assert srv.proc is not None
        assert _open_files(srv.proc.pid) == (256, 256)
        socks: list[socket.socket] = []
        try:
            for _ in range(400):
                socks.append(connect(target.port))
            time.sleep(0.5)
            start = time.monotonic()
            assert target.chat()
            assert time.monotonic() - start < 20
        finally:
            for s in socks:
                s.close()
        log = srv.log_tail(200)
        assert "Too many open files" not in log and "EMFILE" not in log


@pytest.mark.process
def test_a_cap_the_descriptors_cannot_hold_is_refused() -> None:
    """``--max-connections`` above what the descriptor limit allows: one line, exit 2, before loading."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    proc = subprocess.run(
        [sys.executable, "-m", "haloserve", "serve", "--max-connections", "1000", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("halo serve: error: --max-connections 1000")
    assert "Traceback" not in proc.stderr


# Pure parts
def test_connection_cap_is_sized_below_the_descriptor_limit() -> None:
    """Auto: the limit less a reserve, per descriptors a connection needs, at most AUTO_CAP_MAX."""
    assert connection_cap(0, nofile=256) == available_connections(256) == 256 - 64 - 16
    assert connection_cap(0, 2, nofile=256) == (256 - 80) // 2
    assert connection_cap(0, nofile=1 << 20) == AUTO_CAP_MAX
    assert connection_cap(50, nofile=256) == 50
    with pytest.raises(ConfigError, match="allows at most 176"):
        connection_cap(177, nofile=256)
    with pytest.raises(ConfigError, match="no room"):
        connection_cap(0, nofile=64)


class _Conn:
    def __init__(self, table: ConnTable) -> None:
        self.table = table
        self.evicted = False

    def evict(self) -> None:
        self.evicted = True


def test_table_closes_the_oldest_idle_connection_first() -> None:
    """At the cap the longest-idle connection goes; busy ones are never closed; else refusal."""
    table = ConnTable(3)
    a, b, c, d, e = (_Conn(table) for _ in range(5))
    for conn in (a, b, c):
        assert table.admit(conn)
    table.set_idle(a, False)  # a is busy
    table.set_idle(b, False)
    table.set_idle(b, True)  # b is idle again, now the most recent
    assert table.admit(d)  # c has been idle longest
    assert c.evicted and not a.evicted and not b.evicted
    table.set_idle(b, False)
    table.set_idle(d, False)
    assert not table.admit(e) and table.refused == 1  # everything busy
    table.discard(a)
    assert table.admit(e)


def test_canned_response_is_a_complete_closing_http_response() -> None:
    """Status line, JSON length, Connection: close and the error's own headers."""
    from haloserve.errors import ServiceUnavailableError

    raw = canned_response(ServiceUnavailableError("full", retry_after=2))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"connection: close" in head and b"Retry-After: 2" in head
    assert f"content-length: {len(body)}".encode() in head
    assert error_code(body) == "service_unavailable"


def test_gateway_limits_follow_a_reload_and_keep_a_bad_cap_out(caplog: pytest.LogCaptureFixture) -> None:
    """New settings (a config reload) give new connections new limits; an impossible cap is logged."""
    from haloserve.config.gateway import GatewaySettings
    from haloserve.gateway.limits import LimitsSource

    current = [GatewaySettings(backends=["http://127.0.0.1:1"], header_timeout=4, max_connections=10)]
    source = LimitsSource(lambda: current[0])
    assert (source().header_timeout, source().max_connections) == (4, 10)
    current[0] = current[0].model_copy(update={"header_timeout": 7.0})
    assert source().header_timeout == 7.0
    current[0] = current[0].model_copy(update={"max_connections": 10**7})
    assert source().max_connections == 10  # kept, and said
    assert "connection limits unchanged" in caplog.text
