"""Backends from a file that another program keeps current (``--backends-file``, written by ``halo cluster``).

The file is JSON, ``{"backends": [{"url": ..., "models": [...], "weight": 2, "labels": {...}}]}``
(every field of a ``--backend`` is allowed; only ``url`` is required). Its writer replaces it
atomically (a temporary file, then ``os.replace``), so a read never sees half a file. The gateway
looks at its modification time, size and inode once a second (never on the request path) and reads
it again when one changed; the list then goes through the same switch as a config reload: new
backends are probed first and get traffic only once their ``/health`` answers 200, removed ones
finish their in-flight requests. A file that does not parse is reported once and the last good
list stays; so does a file that disappears.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from haloserve.config.gateway import BackendSpec
from haloserve.errors import ConfigError

log = logging.getLogger("haloserve.gateway")
MAX_BYTES = 4 << 20  # thousands of backends fit; a runaway writer does not make the gateway read gigabytes

Signature = tuple[int, int, int]  # mtime (ns), size, inode
_MISSING: Signature = (0, 0, 0)


def signature(path: Path) -> Signature | None:
    """What tells a changed file from the last one read (None: no such file)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def parse_backends(text: str | bytes, source: str = "backends file") -> list[BackendSpec]:
    """The backends a file lists; a ConfigError naming the first problem."""
    try:
        data: Any = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{source}: not JSON ({exc})") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None
    items = data.get("backends") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ConfigError(f'{source}: expected {{"backends": [{{"url": ...}}, ...]}}')
    specs: list[BackendSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        try:
            spec = BackendSpec.model_validate(item)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err.get("loc", ()))
            where = f"backends[{i}]" + (f".{where}" if where else "")
            raise ConfigError(f"{source}: {where}: {err['msg']}") from None
        if spec.url in seen:
            raise ConfigError(f"{source}: backends[{i}]: {spec.url} is listed twice")
        try:  # an api_key of ENV:NAME with NAME unset makes the file bad (its last good list stays)
            spec.resolved_api_key()
        except ConfigError as exc:
            raise ConfigError(f"{source}: backends[{i}]: {exc.message}") from None
        seen.add(spec.url)
        specs.append(spec)
    return specs


class BackendsFile:
    """The last good list of one backends file, re-read when the file changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.specs: list[BackendSpec] = []
        self._seen: Signature | None = None
        self._lock = threading.Lock()  # poll runs in an executor thread; SIGHUP and upkeep may overlap

    def poll(self, path: Path | None) -> bool:
        """Re-read the file at ``path`` if it (or the path) changed; True when the list changed.

        Blocking (stat, read): call it off the event loop.
        """
        with self._lock:
            if path != self.path:
                self.path, self._seen = path, None
                if path is None:
                    changed, self.specs = bool(self.specs), []
                    return changed
            if path is None:
                return False
            sig = signature(path)
            if sig is not None and sig == self._seen:
                return False
            if sig is None:
                if self._seen != _MISSING:  # said once until the file is back
                    n = len(self.specs)
                    log.warning("backends file %s: missing; keeping %d backend(s) from it", path, n)
                self._seen = _MISSING
                return False
            self._seen = sig
            try:
                specs = self._read(path)
            except ConfigError as exc:
                log.error("%s; keeping the last good list (%d backend(s))", exc.message, len(self.specs))
                return False
            changed = specs != self.specs
            self.specs = specs
            if changed:
                log.info("backends file %s: %d backend(s)", path, len(specs))
            return changed

    @staticmethod
    def _read(path: Path) -> list[BackendSpec]:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"backends file {path}: {exc.strerror or exc}") from None
        if len(data) > MAX_BYTES:
            raise ConfigError(f"backends file {path}: larger than {MAX_BYTES} bytes")
        return parse_backends(data, f"backends file {path}")
