"""Helpers for the RPC tests: small TCP peers on loopback that answer the way a worker (or not) does."""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

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


class HaloProcess:
    """A ``python -m haloserve`` child whose stdout and stderr lines are collected as they come."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "haloserve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for r in self._readers:
            r.start()

    @staticmethod
    def _read(stream: IO[str], lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        """The first stdout or stderr line containing ``text`` (fails when the process ends first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.out + self.err:
                if text in line:
                    return line
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the readers drain
                if not any(text in line for line in self.out + self.err):
                    break
            time.sleep(0.05)
        raise AssertionError(f"no line with {text!r}; stdout={self.out} stderr={self.err}")

    def finish(self, timeout: float = 30.0) -> int:
        """Wait for the exit status (and the last output lines)."""
        code = self.proc.wait(timeout)
        for r in self._readers:
            r.join(5)
        return code

    def kill(self) -> None:
        """Kill it if it still runs."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def halo() -> Iterator[Callable[..., HaloProcess]]:
    """Start ``halo`` commands as child processes; every one left running is killed after the test."""
    started: list[HaloProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> HaloProcess:
        started.append(HaloProcess(list(args), env))
        return started[-1]

    yield start
    for p in started:
        p.kill()


STANDIN = Path(__file__).with_name("standin_rpc_server.py")


@pytest.fixture
def standin(tmp_path: Path) -> Path:
    """An executable named ggml-rpc-server that runs the stand-in (same PID: exec, so signals reach it)."""
    shim = tmp_path / "bin" / "ggml-rpc-server"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(STANDIN))} "$@"\n')
    shim.chmod(0o755)
    return shim
