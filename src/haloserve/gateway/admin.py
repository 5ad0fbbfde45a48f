"""The gateway's admin API under ``/admin/``: API keys, usage and backends, for the web UI and scripts.

Enabled by ``--admin-key`` (a literal or ``ENV:NAME``); without it every ``/admin/`` path answers
404 "admin API disabled". Only the SHA-256 of the admin key is held, and a presented key is hashed
and compared in constant time. The routes use the same store and the same grouping as ``halo keys``
and ``halo usage``; a created or revoked key takes effect in this worker before the answer is sent
(other workers see it within a second, as with ``halo keys``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from haloserve.errors import (
    AuthenticationError,
    CommandError,
    ConfigError,
    HaloError,
    InvalidRequestError,
    NotFoundError,
)
from haloserve.gateway.request import TOO_DEEP, error_response, read_body
from haloserve.gateway.store import group_usage, parse_groups

if TYPE_CHECKING:
    from haloserve.gateway.app import Gateway

T = TypeVar("T")
PREFIX = "/admin/"
_MAX_BODY = 64 << 10
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def admin_key_hash(key: str | None) -> bytes | None:
    """What the gateway keeps of the admin key: its SHA-256 (None: the admin API is off)."""
    return hashlib.sha256(key.encode()).digest() if key else None


class NewKey(BaseModel):
    """The body of ``POST /admin/keys``: the options of ``halo keys create``."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=200, description="A label for the key.")
    rpm: int = Field(default=0, ge=0, description="Requests per minute (0: unlimited).")
    tpm: int = Field(default=0, ge=0, description="Tokens per minute (0: unlimited).")
    models: list[str] = Field(default_factory=list, description="Models the key may use (empty: all).")


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(obj).encode(), status=status, content_type="application/json")


def _bad_body(exc: ValidationError) -> InvalidRequestError:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or None
    return InvalidRequestError(f"{where or 'body'}: {err.get('msg', 'invalid')}", param=where)


class Admin:
    """The ``/admin/`` routes of one gateway worker."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.key_hash: bytes | None = None  # set by the gateway from its settings (and on reload)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Authenticate, then route; every error in the OpenAI shape."""
        try:
            self._authenticate(request.headers.get("Authorization"))
            method, path = request.method, request.path
            if path == "/admin/keys":
                if method == "GET":
                    return await self._list_keys()
                if method == "POST":
                    return await self._create_key(request)
            elif path.startswith("/admin/keys/") and method == "DELETE":
                return await self._revoke(path[len("/admin/keys/") :])
            elif path == "/admin/usage" and method == "GET":
                return await self._usage(request)
            elif path == "/admin/backends" and method == "GET":
                return _json({"object": "list", "data": self.gw.backends_info()})
            raise NotFoundError(f"{method} {path}: not found")
        except HaloError as exc:
            return error_response(exc)

    def _authenticate(self, authorization: str | None) -> None:
        if self.key_hash is None:
            raise NotFoundError(
                "admin API disabled: start the gateway with --admin-key", code="admin_disabled"
            )
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        if not token:
            raise AuthenticationError("missing admin key: send 'Authorization: Bearer <admin key>'")
        # Hashing first makes the compare constant-time in the key's length as well.
        if not hmac.compare_digest(hashlib.sha256(token.encode()).digest(), self.key_hash):
            raise AuthenticationError("invalid admin key")

    async def _store(self, fn: Callable[[], T]) -> T:
        """Run a store call off the event loop (SQLite blocks)."""
        return await asyncio.get_running_loop().run_in_executor(None, fn)

    async def _list_keys(self) -> web.Response:
        keys = await self._store(self.gw.store.list_keys)
        return _json({"object": "list", "data": [k.as_dict() for k in keys]})

    async def _create_key(self, request: web.BaseRequest) -> web.Response:
        body = await read_body(request, _MAX_BODY)
        try:
            obj = json.loads(body)
        except ValueError:
            raise InvalidRequestError("malformed JSON body") from None
        except RecursionError:
            raise InvalidRequestError(TOO_DEEP) from None
        if not isinstance(obj, dict):
            raise InvalidRequestError("the body must be a JSON object")
        try:
            new = NewKey.model_validate(obj)
        except ValidationError as exc:
            raise _bad_body(exc) from None
        models = [m.strip() for m in new.models if m.strip()]
        made = await self._store(
            lambda: self.gw.store.create_key(new.name, rpm=new.rpm, tpm=new.tpm, models=models)
        )
        await self.gw.refresh_keys(force=True)  # usable at once in this worker
        return _json({**made.record.as_dict(), "key": made.secret}, status=201)

    async def _revoke(self, ident: str) -> web.Response:
        if not ident:
            raise InvalidRequestError("DELETE /admin/keys/{name}: name or id missing")
        try:
            rec = await self._store(lambda: self.gw.store.revoke(ident))
        except CommandError as exc:  # several active keys share the name
            raise InvalidRequestError(exc.message, code="ambiguous_key") from None
        # Refused at once by this worker: the cache must not keep the key alive until the next upkeep.
        await self.gw.refresh_keys(force=True)
        revoked = await self._store(lambda: [k for k in self.gw.store.list_keys() if k.id == rec.id])
        return _json((revoked[0] if revoked else rec).as_dict())

    async def _usage(self, request: web.BaseRequest) -> web.Response:
        q = request.query
        try:
            by = parse_groups(q.get("by", "day,key,model"))
        except ConfigError as exc:
            raise InvalidRequestError(exc.message, param="by") from None
        for name in ("since", "until"):
            if name in q and not _DAY.match(q[name]):
                raise InvalidRequestError(f"{name}: expected YYYY-MM-DD", param=name)
        await self.gw.flush_usage()  # this worker's pending counters first, so the report has them
        rows = await self._store(
            lambda: self.gw.store.usage(
                since=q.get("since"), until=q.get("until"), key=q.get("key"), model=q.get("model")
            )
        )
        return _json({"object": "list", "by": by, "data": group_usage(rows, by)})
