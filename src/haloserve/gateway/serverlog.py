"""The gateway's logs: aiohttp's server log without request content (a request it cannot parse is one
line, never its bytes), and the access log of API requests."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

from aiohttp.http_exceptions import HttpProcessingError

_PARENT = "haloserve.gateway"


class ServerLog(logging.Logger):
    """The logger handed to ``web.Server(logger=...)``; its records go to ``haloserve.gateway``'s handlers.

    aiohttp logs a request it cannot parse at ERROR with a traceback whose message quotes the
    offending bytes: an ``Authorization`` header over 8,190 bytes put the API key in the log. Here
    such a record becomes one INFO line naming the kind of error and the client's address; every
    other record (the server's own faults) passes unchanged.
    """

    def __init__(self) -> None:
        super().__init__(_PARENT + ".http")
        self.parent = logging.getLogger(_PARENT)

    def handle(self, record: logging.LogRecord) -> None:
        """Replace a parse error's record by a line without its content, then log as usual."""
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            # aiohttp: "Error handling request from %s" % request.remote
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record = self.makeRecord(
                self.name,
                logging.INFO,
                record.pathname,
                record.lineno,
                "rejected a malformed request from %s: %s (HTTP %s)",
                (remote, type(exc).__name__, exc.code),
                None,
            )
            if not self.isEnabledFor(logging.INFO):
                return
        super().handle(record)


class AccessLog:
    """One JSON line per API request on stderr, buffered on the hot path and written in one go."""

    __slots__ = ("_lines", "_stream")

    def __init__(self, stream: TextIO | None = None) -> None:
        self._lines: list[str] = []
        self._stream = stream  # None: sys.stderr as it is at each flush

    def add(self, entry: dict[str, Any]) -> None:
        """Buffer one request's line (written by the next :meth:`flush`, within a second)."""
        self._lines.append(json.dumps(entry, separators=(",", ":")))

    def flush(self) -> None:
        """Write the buffered lines."""
        if self._lines:
            lines, self._lines = self._lines, []
            out = self._stream or sys.stderr
            out.write("\n".join(lines) + "\n")
            out.flush()
