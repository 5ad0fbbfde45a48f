"""ASGI middleware serving the UI for ``halo serve``: ``/ui`` and a browser's ``GET /``; all else passes."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from haloserve.ui.assets import PREFIX, SECURITY_HEADERS, accepts_gzip, lookup, wants_html


class UIFiles:
    """Answers ``/ui/*`` from the package's static files and redirects ``GET /`` from a browser.

    It sits outside the API middleware, so the static files need no API key (they hold no data; every
    call the UI makes goes through the API and its key check). Other requests cost one prefix test.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/" or path.startswith(PREFIX)):
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v.decode("latin-1") for k, v in scope["headers"]}  # bytes -> str
        method = scope["method"]
        if path == "/":
            if method in ("GET", "HEAD") and wants_html(headers.get(b"accept", "")):
                await _send(send, 307, {"Location": PREFIX + "/", "Content-Length": "0"}, b"", method)
                return
            await self.app(scope, receive, send)
            return
        asset = lookup(path) if method in ("GET", "HEAD") else None
        if asset is None:
            if path == PREFIX or path.startswith(PREFIX + "/"):
                body = b"not found"
                head = {**SECURITY_HEADERS, "Content-Type": "text/plain", "Content-Length": str(len(body))}
                await _send(send, 404, head, body, method)
                return
            await self.app(scope, receive, send)
            return
        gz = accepts_gzip(headers.get(b"accept-encoding", ""))
        payload = asset.payload(gz)
        await _send(send, 200, {**asset.headers(gz), "Content-Length": str(len(payload))}, payload, method)


async def _send(send: Send, status: int, headers: dict[str, str], body: bytes, method: str) -> None:
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
