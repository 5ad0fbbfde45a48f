"""probe(): TCP connect plus ggml-rpc's HELLO in Python, so a dead or wrong worker never reaches ggml."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

from haloserve.engine.rpc import Endpoint, library_protocol, probe
from tests.rpc.conftest import Handler, Peer, read_exact, rpc_hello_handler

MakePeer = Callable[[Handler], Peer]


def test_closed_port_is_unreachable() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # bound then closed: nothing listens there
    r = probe(Endpoint("127.0.0.1", port), timeout=5)
    assert (r.ok, r.status) == (False, "unreachable")
    assert "refused" in r.reason and f"127.0.0.1:{port}" in r.reason and "\n" not in r.reason


def test_unknown_host_is_unreachable() -> None:
    r = probe("no-such-host.invalid:50052", timeout=5)
    assert r.status == "unreachable" and "resolve" in r.reason


def test_http_server_is_not_rpc(make_peer: MakePeer) -> None:
    def http(conn: socket.socket) -> None:
        conn.recv(100)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    r = probe(f"127.0.0.1:{make_peer(http).port}", timeout=5)
    assert (r.ok, r.status) == (False, "not-rpc")
    assert "not a ggml RPC server" in r.reason and "HTTP/1.1" in r.reason


def test_server_that_closes_is_not_rpc(make_peer: MakePeer) -> None:
    def closes(conn: socket.socket) -> None:
        conn.recv(100)

    r = probe(f"127.0.0.1:{make_peer(closes).port}", timeout=5)
    assert r.status == "not-rpc" and "closed the connection" in r.reason


def test_silent_server_is_no_answer_within_the_timeout(make_peer: MakePeer) -> None:
    def silent(conn: socket.socket) -> None:
        read_exact(conn, 1000)  # reads what comes and never answers, until the probe gives up

    r = probe(f"127.0.0.1:{make_peer(silent).port}", timeout=0.5)
    assert r.status == "no-answer" and "one client at a time" in r.reason


def test_rpc_worker_answers_hello_and_device_memory(make_peer: MakePeer) -> None:
    ours = library_protocol()
    peer = make_peer(rpc_hello_handler(ours, free=3 << 30, total=4 << 30))
    r = probe(f"127.0.0.1:{peer.port}", timeout=5)
    assert r.ok, r.reason
    assert r.version == ours and r.devices == ((3 << 30, 4 << 30),)


def test_other_major_or_newer_minor_is_version_mismatch(make_peer: MakePeer) -> None:
    major, minor, _ = library_protocol()
    for version in ((major + 1, 0, 0), (major, minor + 1, 0), (major - 1, 9, 9)):
        r = probe(f"127.0.0.1:{make_peer(rpc_hello_handler(version, 1, 1)).port}", timeout=5)
        assert r.status == "version-mismatch" and r.version == version, r
        assert ".".join(map(str, version)) in r.reason and "same llama.cpp version" in r.reason
    older_patch = (major, minor, 0)  # ggml accepts any patch and an older minor
    assert probe(f"127.0.0.1:{make_peer(rpc_hello_handler(older_patch, 1, 1)).port}", timeout=5).ok


def test_server_older_than_transport_caps_names_its_version(make_peer: MakePeer) -> None:
    # before the HELLO carried transport caps, a server read an empty HELLO and closed on any other
    def old(conn: socket.socket) -> None:
        cmd, size = struct.unpack("<BQ", read_exact(conn, 9))
        if cmd == 14 and size == 0:
            conn.sendall(struct.pack("<Q", 3) + bytes([3, 0, 0]))

    r = probe(f"127.0.0.1:{make_peer(old).port}", timeout=5)
    assert r.status == "version-mismatch" and r.version == (3, 0, 0)
