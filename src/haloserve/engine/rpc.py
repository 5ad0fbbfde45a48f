"""llama.cpp's RPC backend: endpoints, a pure-Python probe of a worker, and ctypes bindings to ggml's RPC API.

ggml's RPC client aborts the whole process (``GGML_ABORT``) when it cannot connect to a worker or the
HELLO handshake fails, so nothing here hands ggml an endpoint that :func:`probe` did not just answer for.
The bindings are looked up in the ``libggml`` llama-cpp-python loaded, the way llama.cpp's own
``common/arg.cpp`` does (``ggml_backend_reg_by_name("RPC")`` + ``ggml_backend_reg_get_proc_address``),
because the exported names and signatures changed across versions (``ggml_backend_rpc_add_device`` ->
``ggml_backend_rpc_add_server``; ``start_server(backend, endpoint, [cache_dir,] free, total)`` ->
``start_server(endpoint, cache_dir, n_threads, n_devices, devices)``).
"""

from __future__ import annotations

import ctypes
import functools
import ipaddress
import re
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from haloserve.errors import CommandError, ConfigError

DEFAULT_PORT = 50052
# The wire this probe speaks (HELLO with 24 bytes of transport caps): ggml-rpc.h RPC_PROTO_*_VERSION of
# llama-cpp-python 0.3.36's ggml. The version a worker must have is the installed library's (read from
# the ggml-rpc.h its wheel installs), with ggml's own rule: same major, minor not newer.
WIRE_VERSION = (7, 0, 0)
_CONN_CAPS_SIZE = 24  # ggml-rpc/transport.h RPC_CONN_CAPS_SIZE: the HELLO request is these bytes
_CMD_GET_DEVICE_MEMORY, _CMD_HELLO, _CMD_DEVICE_COUNT = 11, 14, 15
REBUILD_HINT = (
    'reinstall llama-cpp-python with the RPC backend: CMAKE_ARGS="-DGGML_RPC=ON <your backend flags>" '
    "pip install --no-cache-dir --force-reinstall --no-deps llama-cpp-python (or `make install`)"
)
_HOST_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One RPC worker address."""

    host: str  # a host name, an IPv4 address, or an IPv6 address without brackets
    port: int

    @property
    def is_ipv6(self) -> bool:
        """True when the host is an IPv6 literal."""
        return ":" in self.host

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.is_ipv6 else f"{self.host}:{self.port}"

    def for_ggml(self) -> str:
        """The ``host:port`` string ggml takes; refused for IPv6, which ggml's transport cannot use."""
        if self.is_ipv6:
            # ggml-rpc splits an endpoint at its first ':' and opens AF_INET sockets only
            raise ConfigError(
                f"RPC endpoint {self}: ggml's RPC transport is IPv4-only; use an IPv4 address or a host name"
            )
        return f"{self.host}:{self.port}"


def parse_endpoint(text: str, default_port: int = DEFAULT_PORT) -> Endpoint:
    """``host:port``, ``host``, ``[v6]:port`` or ``[v6]`` -> Endpoint; ConfigError naming what is wrong."""
    raw = text.strip()
    where = f"RPC endpoint {raw!r}"
    if not raw:
        raise ConfigError("RPC endpoint is empty: give host:port")
    port_text: str | None = None
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"{where}: write an IPv6 address as [addr]:port")
        port_text = rest[1:] if rest else None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{where}: {host!r} is not an IPv6 address") from None
    elif raw.count(":") > 1:
        try:
            host = str(ipaddress.IPv6Address(raw))  # a bare IPv6 address, default port
        except ValueError:
            raise ConfigError(f"{where}: write an IPv6 address as [addr]:port") from None
    else:
        host, sep, tail = raw.partition(":")
        port_text = tail if sep else None
        if not _HOST_RE.fullmatch(host):
            raise ConfigError(f"{where}: {host!r} is not a host name or IPv4 address")
    port = default_port
    if port_text is not None:
        if not port_text.isdigit():
            raise ConfigError(f"{where}: port {port_text!r} is not a number")
        port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{where}: port {port} is outside 1-65535")
    return Endpoint(host, port)


def parse_endpoints(values: str | Sequence[str]) -> list[Endpoint]:
    """A comma-separated list (or several) of endpoints, as ``--rpc``/``LLAMA_ARG_RPC`` give them."""
    items = [values] if isinstance(values, str) else list(values)
    out: list[Endpoint] = []
    for item in items:
        for part in item.split(","):
            if not part.strip():
                continue
            ep = parse_endpoint(part)
            if ep in out:
                raise ConfigError(f"RPC endpoint {ep} is given twice")
            out.append(ep)
    return out


# --- probe: TCP connect + HELLO, in Python, so a dead worker never reaches ggml ---

ProbeStatus = Literal["ok", "unreachable", "not-rpc", "version-mismatch", "no-answer"]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What a worker answered: ``ok`` only when ggml would accept its HELLO."""

    endpoint: Endpoint
    status: ProbeStatus
    reason: str  # one line, for an error message or /health
    version: tuple[int, int, int] | None = None
    devices: tuple[tuple[int, int], ...] = ()  # (free, total) bytes per device the worker exposes

    @property
    def ok(self) -> bool:
        """True when ggml can use this worker."""
        return self.status == "ok"


@functools.cache
def library_protocol() -> tuple[int, int, int]:
    """The RPC protocol version of the installed ggml (its ggml-rpc.h), else :data:`WIRE_VERSION`."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")  # finds the package without loading the library
    if spec and spec.origin:
        header = Path(spec.origin).parent.parent / "include" / "ggml-rpc.h"
        try:
            text = header.read_text(errors="replace")
            parts = [
                re.search(rf"#define RPC_PROTO_{p}_VERSION\s+(\d+)", text)
                for p in ("MAJOR", "MINOR", "PATCH")
            ]
            if all(parts):
                return tuple(int(m.group(1)) for m in parts if m)  # type: ignore[return-value]
        except OSError:
            pass
    return WIRE_VERSION


class _Closed(Exception):
    """The peer closed the connection."""


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = b""
    while len(buf) < n:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise _Closed
        buf += chunk
    return buf


def _command(sock: socket.socket, cmd: int, payload: bytes, deadline: float) -> bytes:
    # request: | cmd u8 | size u64 | payload |; reply: | size u64 | payload | (ggml-rpc.cpp send_rpc_cmd)
    sock.settimeout(max(0.001, deadline - time.monotonic()))
    sock.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)
    (size,) = struct.unpack("<Q", _recv_exact(sock, 8, deadline))
    if size > 4096:  # no RPC reply to these commands is long: this peer speaks something else
        raise ValueError(f"answered with bytes that are not an RPC reply ({struct.pack('<Q', size)[:8]!r})")
    return _recv_exact(sock, size, deadline)


def probe(endpoint: Endpoint | str, timeout: float = 3.0) -> ProbeResult:
    """Connect to a worker and do ggml's HELLO handshake (and read its devices' memory), in Python."""
    ep = parse_endpoint(endpoint) if isinstance(endpoint, str) else endpoint
    want = library_protocol()
    deadline = time.monotonic() + timeout

    def result(status: ProbeStatus, reason: str, **kw: Any) -> ProbeResult:
        return ProbeResult(ep, status, f"RPC worker {ep}: {reason}", **kw)

    try:
        sock = socket.create_connection((ep.host, ep.port), timeout=timeout)
    except ConnectionRefusedError:
        return result("unreachable", "connection refused (nothing listens on that port)")
    except TimeoutError:
        return result("unreachable", f"no answer to a TCP connect within {timeout:g} s")
    except socket.gaierror as exc:
        return result("unreachable", f"cannot resolve {ep.host!r} ({exc.strerror})")
    except OSError as exc:
        return result("unreachable", exc.strerror or str(exc))
    with sock:
        try:
            rsp = _command(sock, _CMD_HELLO, bytes(_CONN_CAPS_SIZE), deadline)
        except (_Closed, ConnectionResetError):  # closing with our HELLO unread resets the connection
            return _probe_old(ep, deadline, result)
        except TimeoutError:
            return result(
                "no-answer",
                f"connected, but no HELLO answer within {timeout:g} s (a worker serves one client at a time: "
                "another halo serve may hold it; or this is not an RPC server)",
            )
        except (ValueError, OSError) as exc:
            return result("not-rpc", f"not a ggml RPC server ({exc})")
        if len(rsp) != 4 + _CONN_CAPS_SIZE:
            return result("not-rpc", f"not a ggml RPC server (a {len(rsp)}-byte HELLO reply)")
        version = (rsp[0], rsp[1], rsp[2])
        if version[0] != want[0] or version[1] > want[1]:
            return result("version-mismatch", _mismatch(version, want), version=version)
        try:
            (count,) = struct.unpack("<I", _command(sock, _CMD_DEVICE_COUNT, b"", deadline))
            devices = tuple(
                struct.unpack("<QQ", _command(sock, _CMD_GET_DEVICE_MEMORY, struct.pack("<I", i), deadline))
                for i in range(min(count, 64))
            )
        except (_Closed, ValueError, OSError, struct.error) as exc:
            return result("not-rpc", f"HELLO answered but the device query failed ({exc or 'closed'})")
    if not devices:
        return result("not-rpc", "the worker exposes no device")
    return result("ok", f"protocol {_v(version)}, {len(devices)} device(s)", version=version, devices=devices)


def _probe_old(ep: Endpoint, deadline: float, result: Any) -> ProbeResult:
    # A server from before the HELLO carried transport caps reads a HELLO with no payload and closes on
    # ours; ask it that way to name its version (its reply is major, minor, patch)
    try:
        with socket.create_connection(
            (ep.host, ep.port), timeout=max(0.001, deadline - time.monotonic())
        ) as sock:
            rsp = _command(sock, _CMD_HELLO, b"", deadline)
    except (_Closed, ValueError, OSError):
        return result("not-rpc", "not a ggml RPC server (it closed the connection on HELLO)")
    if len(rsp) != 3:
        return result("not-rpc", f"not a ggml RPC server (a {len(rsp)}-byte HELLO reply)")
    version = (rsp[0], rsp[1], rsp[2])
    return result("version-mismatch", _mismatch(version, library_protocol()), version=version)


def _v(version: tuple[int, int, int]) -> str:
    return ".".join(map(str, version))


def _mismatch(theirs: tuple[int, int, int], ours: tuple[int, int, int]) -> str:
    return (
        f"speaks RPC protocol {_v(theirs)}, this halo's ggml {_v(ours)} "
        f"(needs {ours[0]}.x, minor <= {ours[1]}): build the worker from the same llama.cpp version"
    )


# --- ctypes bindings to the loaded ggml ---

_VP, _SZ = ctypes.c_void_p, ctypes.c_size_t


@dataclass(frozen=True, slots=True)
class RpcApi:
    """ggml's RPC entry points in the loaded library, with the signatures this version has."""

    flavour: Literal["server", "device"]  # add_server + multi-device start_server, or the older add_device
    lib: Any  # the libggml CDLL
    add: Any  # add_server(endpoint) -> reg, or add_device(endpoint) -> dev
    start: Any  # start_server, called by :meth:`start_server` with this flavour's arguments
    start_has_cache: bool  # the older start_server took a cache_dir only from some version on

    def add_server(self, endpoint: Endpoint) -> list[str]:
        """Register a worker's devices with ggml (probe it first: ggml aborts on a dead one); their names."""
        g = self.lib
        handle = self.add(endpoint.for_ggml().encode())
        if not handle:
            raise CommandError(f"RPC worker {endpoint}: ggml registered no device for it")
        if self.flavour == "device":
            g.ggml_backend_device_register(handle)
            return [_text(g.ggml_backend_dev_name(handle))]
        g.ggml_backend_register(handle)  # what common/arg.cpp does with add_server's registry
        return [
            _text(g.ggml_backend_dev_name(g.ggml_backend_reg_dev_get(handle, i)))
            for i in range(int(g.ggml_backend_reg_dev_count(handle)))
        ]

    def device_memory(self, endpoint: Endpoint, device: int = 0) -> tuple[int, int]:
        """(free, total) bytes of a worker's device through ggml (probe first: ggml aborts on a dead one)."""
        fn = self.lib.ggml_backend_rpc_get_device_memory
        fn.restype, free, total = None, _SZ(0), _SZ(0)
        if self.flavour == "server":  # the multi-device API added the device index
            fn.argtypes = [ctypes.c_char_p, ctypes.c_uint32, ctypes.POINTER(_SZ), ctypes.POINTER(_SZ)]
            fn(endpoint.for_ggml().encode(), device, ctypes.byref(free), ctypes.byref(total))
        else:
            fn.argtypes = [ctypes.c_char_p, ctypes.POINTER(_SZ), ctypes.POINTER(_SZ)]
            fn(endpoint.for_ggml().encode(), ctypes.byref(free), ctypes.byref(total))
        return int(free.value), int(total.value)

    def start_server(
        self, endpoint: Endpoint, cache_dir: str | None, n_threads: int, devices: Sequence[int]
    ) -> None:
        """Serve ``devices`` (ggml device handles) on ``endpoint``; blocks for good, returns on failure."""
        ep, cache = endpoint.for_ggml().encode(), cache_dir.encode() if cache_dir else None
        if self.flavour == "server":
            arr = (_VP * len(devices))(*devices)
            self.start(ep, cache, n_threads, len(devices), arr)
            return
        # the older API served one backend and reported the memory it was given
        g = self.lib
        dev = devices[0]
        backend = g.ggml_backend_dev_init(dev, None)
        free, total = _SZ(0), _SZ(0)
        g.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        if self.start_has_cache:
            self.start(backend, ep, cache, free.value, total.value)
        else:
            self.start(backend, ep, free.value, total.value)


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", errors="replace") if raw else ""


def _lib_dir() -> Path:
    import llama_cpp

    return Path(llama_cpp.__file__).parent / "lib"


def _mentions(text: bytes) -> bool:
    """Whether a ggml library file next to libggml holds ``text`` (a printf format of one API version)."""
    for path in _lib_dir().glob("libggml*"):
        try:
            if text in path.read_bytes():
                return True
        except OSError:
            continue
    return False


def _entry_point(g: Any, reg: int | None, name: str) -> int | None:
    """The address of one of ggml's RPC functions: from the "RPC" registry, else an exported symbol."""
    if reg:
        addr = g.ggml_backend_reg_get_proc_address(reg, name.encode())
        if addr:
            return int(addr)
    try:  # older builds exported these without the registry's proc address
        return ctypes.cast(getattr(g, name), _VP).value
    except AttributeError:
        return None


@functools.cache
def rpc_api() -> RpcApi:
    """The RPC API of the loaded ggml; CommandError with the rebuild command when it has none."""
    import llama_cpp as lc
    from llama_cpp._ggml import libggml as g

    from haloserve.engine.llamalog import init_backend

    init_backend()
    if hasattr(lc, "llama_supports_rpc") and not lc.llama_supports_rpc():
        raise CommandError(f"this llama-cpp-python was built without ggml's RPC backend: {REBUILD_HINT}")
    g.ggml_backend_reg_by_name.argtypes, g.ggml_backend_reg_by_name.restype = [ctypes.c_char_p], _VP
    g.ggml_backend_reg_get_proc_address.argtypes = [_VP, ctypes.c_char_p]
    g.ggml_backend_reg_get_proc_address.restype = _VP
    for fn, args, res in (
        ("ggml_backend_register", [_VP], None),
        ("ggml_backend_device_register", [_VP], None),
        ("ggml_backend_reg_dev_count", [_VP], _SZ),
        ("ggml_backend_reg_dev_get", [_VP, _SZ], _VP),
        ("ggml_backend_dev_name", [_VP], ctypes.c_char_p),
        ("ggml_backend_dev_by_name", [ctypes.c_char_p], _VP),
        ("ggml_backend_dev_init", [_VP, ctypes.c_char_p], _VP),
        ("ggml_backend_dev_memory", [_VP, ctypes.POINTER(_SZ), ctypes.POINTER(_SZ)], None),
    ):
        f = getattr(g, fn)
        f.argtypes, f.restype = args, res
    reg = g.ggml_backend_reg_by_name(b"RPC")
    lookup = functools.partial(_entry_point, g, reg)
    add_server, add_device = lookup("ggml_backend_rpc_add_server"), lookup("ggml_backend_rpc_add_device")
    start = lookup("ggml_backend_rpc_start_server")
    if not start or not (add_server or add_device):
        raise CommandError(f"this llama-cpp-python's ggml has no RPC server/client API: {REBUILD_HINT}")
    if add_server:
        return RpcApi(
            "server",
            g,
            ctypes.CFUNCTYPE(_VP, ctypes.c_char_p)(add_server),
            ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, _SZ, _SZ, ctypes.POINTER(_VP))(start),
            True,
        )
    has_cache = _mentions(b"local cache")  # the start-up line only the cache_dir variant prints
    start_t = (
        ctypes.CFUNCTYPE(None, _VP, ctypes.c_char_p, ctypes.c_char_p, _SZ, _SZ)
        if has_cache
        else ctypes.CFUNCTYPE(None, _VP, ctypes.c_char_p, _SZ, _SZ)
    )
    add = ctypes.CFUNCTYPE(_VP, ctypes.c_char_p)(add_device or 0)
    return RpcApi("device", g, add, start_t(start), has_cache)


def has_rpc() -> bool:
    """Whether the installed llama-cpp-python can use RPC workers and serve as one."""
    try:
        rpc_api()
    except CommandError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m haloserve.engine.rpc --check``: exit 0 when the library has RPC (for `make install`)."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if args != ["--check"]:
        print("usage: python -m haloserve.engine.rpc --check", file=sys.stderr)
        return 2
    try:
        api = rpc_api()
    except CommandError as exc:
        print(f"no RPC: {exc.message}", file=sys.stderr)
        return 1
    print(f"RPC: yes ({api.flavour} API, protocol {_v(library_protocol())})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
