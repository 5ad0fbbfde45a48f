"""The UI's static files, read from the package once, with the headers every UI response carries.

Both servers answer ``/ui`` from here: :func:`lookup` maps a request path to an :class:`Asset` (bytes,
type, gzip form), :func:`wants_html` decides whether ``GET /`` redirects a browser to the UI. Nothing
here runs on the API's path: the servers call it only for ``/ui`` and for ``/``.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

PREFIX = "/ui"
INDEX = "index.html"

# Strict: only our own files, no inline script or style, no framing, no plugins; fetch() may reach this
# origin only (the API the UI calls is the server that served it).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}


@dataclass(frozen=True)
class Asset:
    """One static file: its bytes, gzip-compressed bytes and content type."""

    body: bytes
    gzipped: bytes
    content_type: str

    def headers(self, gzip_ok: bool) -> dict[str, str]:
        """The response headers for this asset (compressed when the client accepts gzip)."""
        h = {**SECURITY_HEADERS, "Content-Type": self.content_type, "Vary": "Accept-Encoding"}
        if gzip_ok:
            h["Content-Encoding"] = "gzip"
        return h

    def payload(self, gzip_ok: bool) -> bytes:
        """The bytes to send."""
        return self.gzipped if gzip_ok else self.body


@lru_cache(maxsize=64)
def _load(name: str) -> Asset | None:
    suffix = name[name.rfind(".") :] if "." in name else ""
    ctype = _TYPES.get(suffix)
    if ctype is None:
        return None
    node = resources.files("haloserve.ui").joinpath("static")
    for part in name.split("/"):
        node = node.joinpath(part)
    if not node.is_file():
        return None
    body = node.read_bytes()
    return Asset(body, gzip.compress(body, 9, mtime=0), ctype)


def lookup(path: str) -> Asset | None:
    """The asset for request path ``path`` (``/ui``, ``/ui/``, ``/ui/app.js``), or None.

    Only names made of safe characters under the static folder resolve: no ``..``, no hidden files.
    """
    if path in (PREFIX, PREFIX + "/"):
        return _load(INDEX)
    if not path.startswith(PREFIX + "/"):
        return None
    name = path[len(PREFIX) + 1 :]
    parts = name.split("/")
    if any(not p or p.startswith(".") or not _safe(p) for p in parts):
        return None
    return _load(name)


def _safe(part: str) -> bool:
    return all(c.isalnum() or c in "-_." for c in part) and part.isascii()


def wants_html(accept: str) -> bool:
    """True when an ``Accept`` header asks for HTML (a browser), not JSON (an API client)."""
    return "text/html" in accept.lower()


def accepts_gzip(accept_encoding: str) -> bool:
    """True when the client takes gzip."""
    return "gzip" in accept_encoding.lower()
