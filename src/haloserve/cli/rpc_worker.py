"""``halo rpc-worker``: expose this node's GPU (or CPU) to ``halo serve --rpc`` on another node."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

from haloserve.cli.options import add_settings_arguments, settings_flags
from haloserve.config.rpc_worker import RpcWorkerSettings

if TYPE_CHECKING:
    from haloserve.engine.devices import Device

HELP = "Expose this node's GPU (or CPU) to `halo serve --rpc` on another node (llama.cpp's RPC backend)."
PROG = "halo rpc-worker"
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags from :class:`RpcWorkerSettings`."""
    add_settings_arguments(parser, RpcWorkerSettings)


def _say(text: str, err: bool = False) -> None:
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


def run(args: argparse.Namespace) -> int:
    """Check the port, then serve in-process (or supervise --binary) until SIGTERM/SIGINT."""
    from haloserve.config import load_settings
    from haloserve.engine import rpc_worker as w

    settings = load_settings(RpcWorkerSettings, flags=settings_flags(args, RpcWorkerSettings))
    w.check_port(settings.host, settings.port)
    w.prepare_cache(settings.cache)
    warning = w.exposure_warning(settings.host)
    if warning:
        _say(f"{PROG}: WARNING: {warning}", err=True)
    if settings.binary:
        return _supervise(settings)
    return _serve_in_process(settings)


def _serve_lines(settings: RpcWorkerSettings) -> None:
    from haloserve.engine.rpc_worker import advertised, serve_line

    _say("use it from the main node with:")
    for address in advertised(settings.host):
        _say(f"  {serve_line(address, settings.port)}")


def _serve_in_process(settings: RpcWorkerSettings) -> int:
    from haloserve.engine.devices import list_devices
    from haloserve.engine.rpc import Endpoint, rpc_api
    from haloserve.engine.rpc_worker import select_devices

    api = rpc_api()  # one error naming the rebuild when this build has no RPC
    devices = select_devices(list_devices(), settings.device)
    handles = [api.lib.ggml_backend_dev_by_name(d.name.encode()) for d in devices]
    _line_buffer_c_stdout()  # ggml prints each client connection with printf: show it as it happens
    stopped = threading.Event()
    caught: list[int] = []

    def on_stop(signum: int) -> None:
        caught.append(signum)
        stopped.set()

    _on_stop_signals(on_stop)

    def serve() -> None:
        try:
            endpoint = Endpoint(settings.host, settings.port)
            api.start_server(endpoint, _text(settings.cache), settings.threads, handles)
        finally:
            stopped.set()  # ggml returns only when it could not listen or accept

    thread = threading.Thread(target=serve, name="ggml-rpc-server", daemon=True)
    thread.start()
    if _listening(settings.port, thread, stopped):
        _print_exposed(settings, devices)
    elif not caught:
        _say(f"{PROG}: error: ggml's RPC server did not start on {settings.host}:{settings.port}", err=True)
        _exit(1)
    while not stopped.wait(0.5):
        pass
    if not caught:
        _say(f"{PROG}: error: ggml's RPC server stopped (its message is above)", err=True)
        _exit(1)
    _say(f"{PROG}: stopped ({signal.Signals(caught[0]).name})")
    _exit(0)


def _exit(code: int) -> NoReturn:
    # ggml's server thread sits in accept() for good and cannot be told to stop; a normal interpreter exit
    # would run C++ static destructors under it. Leave now: there is nothing of ours to flush or save.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _print_exposed(settings: RpcWorkerSettings, devices: list[Device]) -> None:
    from haloserve.engine.rpc import library_protocol
    from haloserve.units import fmt_bytes

    version = ".".join(map(str, library_protocol()))
    _say(
        f"{PROG}: listening on {settings.host}:{settings.port} (in-process ggml RPC server, protocol "
        f"{version}, {settings.threads} threads, tensor cache: {settings.cache or 'none'})"
    )
    width = max(len("device"), *(len(d.name) for d in devices))
    dwidth = max(len("description"), *(len(d.description) for d in devices))
    _say(f"  {'device':<{width}}  {'description':<{dwidth}}  {'free':>11}  {'total':>11}")
    for d in devices:
        free, total = fmt_bytes(d.memory_free), fmt_bytes(d.memory_total)
        _say(f"  {d.name:<{width}}  {d.description:<{dwidth}}  {free:>11}  {total:>11}")
    _serve_lines(settings)


def _supervise(settings: RpcWorkerSettings) -> int:
    from haloserve.engine.rpc_worker import binary_command

    cmd = binary_command(settings)
    caught: list[int] = []
    proc: list[subprocess.Popen[bytes]] = []

    def forward(signum: int) -> None:
        caught.append(signum)
        if proc:
            proc[0].send_signal(signum)

    _on_stop_signals(forward)  # before the child starts, so a signal in between is not lost
    _say(f"{PROG}: supervising {' '.join(cmd.argv)} (tensor cache: {cmd.cache_dir or 'none'})")
    _serve_lines(settings)
    try:
        proc.append(subprocess.Popen(cmd.argv, env={**os.environ, **cmd.env}))  # its output passes through
    except OSError as exc:
        from haloserve.errors import CommandError

        raise CommandError(f"cannot start {cmd.argv[0]}: {exc.strerror}") from None
    if caught:
        proc[0].send_signal(caught[0])
    code = proc[0].wait()
    if caught and code in (0, -caught[0]):  # it stopped because we asked it to
        _say(f"{PROG}: stopped ({signal.Signals(caught[0]).name})")
        return 0
    if code < 0:
        _say(f"{PROG}: {Path(cmd.argv[0]).name} was killed by {signal.Signals(-code).name}", err=True)
        return 128 - code
    if code:
        _say(f"{PROG}: {Path(cmd.argv[0]).name} exited with status {code}", err=True)
    return code


def _on_stop_signals(handler: Callable[[int], object]) -> None:
    def on_signal(signum: int, _frame: FrameType | None) -> None:
        handler(signum)

    for sig in _STOP_SIGNALS:
        signal.signal(sig, on_signal)


def _text(path: Path | None) -> str | None:
    return str(path) if path is not None else None


def _listening(port: int, thread: threading.Thread, stopped: threading.Event, timeout: float = 30.0) -> bool:
    """Wait until a socket of this process listens on ``port`` (read from /proc, so no client connects)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and thread.is_alive() and not stopped.is_set():
        try:
            rows = [row.split() for row in Path("/proc/net/tcp").read_text().splitlines()[1:]]
            fds = os.listdir("/proc/self/fd")
        except OSError:
            return True  # cannot tell here: the probe on the other side will
        ours = set()
        for fd in fds:
            with contextlib.suppress(OSError):  # the listing's own descriptor is gone already
                ours.add(os.readlink(f"/proc/self/fd/{fd}"))
        for r in rows:  # local address, state 0A (LISTEN), inode of a socket we hold
            if len(r) > 9 and r[1].endswith(f":{port:04X}") and r[3] == "0A" and f"socket:[{r[9]}]" in ours:
                return True
        time.sleep(0.05)
    return False


def _line_buffer_c_stdout() -> None:
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        stdout = ctypes.c_void_p.in_dll(libc, "stdout")
        libc.setvbuf(stdout, None, 1, 0)  # _IOLBF
    except (OSError, ValueError, AttributeError):  # pragma: no cover - not glibc
        pass
