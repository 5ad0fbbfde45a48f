"""Helpers for the RPC tests: small TCP peers on loopback that answer the way a worker (or not) does."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest

Handler = Callable[[socket.socket], None]


class Peer:
    """A loopback TCP server running ``handler`` on each connection, in a thread."""

    def __init__(self, handler: Handler) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.handler = handler
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                with contextlib.suppress(OSError):  # a peer the probe dropped
                    self.handler(conn)

    def close(self) -> None:
        """Stop accepting and close the listening socket."""
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def read_exact(conn: socket.socket, n: int) -> bytes:
    """``n`` bytes from ``conn`` (fewer only if it closed)."""
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def rpc_hello_handler(version: tuple[int, int, int], free: int, total: int) -> Handler:
    """A peer speaking ggml-rpc's wire for HELLO, DEVICE_COUNT and GET_DEVICE_MEMORY (one device)."""

    def handle(conn: socket.socket) -> None:
        while True:
            head = read_exact(conn, 9)
            if len(head) < 9:
                return
            cmd, size = struct.unpack("<BQ", head)
            read_exact(conn, size)
            if cmd == 14:  # HELLO: major, minor, patch, padding, 24 bytes of transport caps
                reply = bytes([*version, 0]) + bytes(24)
            elif cmd == 15:
                reply = struct.pack("<I", 1)
            elif cmd == 11:
                reply = struct.pack("<QQ", free, total)
            else:
                return
            conn.sendall(struct.pack("<Q", len(reply)) + reply)

    return handle


@pytest.fixture
def make_peer() -> Iterator[Callable[[Handler], Peer]]:
    """Start loopback peers with a handler; all are closed after the test."""
    peers: list[Peer] = []

    def make(handler: Handler) -> Peer:
        peers.append(Peer(handler))
        return peers[-1]

    yield make
    for p in peers:
        p.close()
