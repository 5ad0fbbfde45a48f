"""The gateway of one worker process: wiring, routes, lifecycle, background upkeep and config reload.

API requests go to the :class:`~haloserve.gateway.proxy.Proxy` built here; the rest (health,
metrics, models) is answered here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from haloserve.config import load_settings
from haloserve.config.gateway import BackendSpec, GatewaySettings, resolve_secret
from haloserve.errors import HaloError, NotFoundError
from haloserve.gateway.accounting import Accounting, Quotas
from haloserve.gateway.admin import PREFIX as ADMIN_PREFIX
from haloserve.gateway.admin import Admin, admin_key_hash
from haloserve.gateway.backends import Backend, BreakerConfig
from haloserve.gateway.checks import backend_ssl_context
from haloserve.gateway.discovery import BackendsFile
from haloserve.gateway.health import probe_loop, probe_once
from haloserve.gateway.http1 import ClientPool
from haloserve.gateway.limits import GuardedServer, LimitsSource
from haloserve.gateway.metrics import GatewayMetrics
from haloserve.gateway.policy import Balancer
from haloserve.gateway.pool import Pool
from haloserve.gateway.proxy import Proxy
from haloserve.gateway.request import error_response
from haloserve.gateway.serverlog import AccessLog, ServerLog
from haloserve.gateway.store import Store
from haloserve.protocol.models import find_card, model_card, model_list
from haloserve.ui import assets as ui_assets

log = logging.getLogger("haloserve.gateway")


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(obj).encode(), status=status, content_type="application/json")


class Gateway:
    """One worker: ``await gw.start()``, serve until ``await gw.drain()``; state is per instance."""

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        config_path: Path | None = None,
        flags: dict[str, Any] | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.flags = dict(flags or {})
        self.reuse_port = reuse_port
        self.port = settings.port
        self.client: aiohttp.ClientSession | None = None  # probes and discovery; open while started
        self._probes: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._server: web.Server | None = None
        self._tcp: asyncio.AbstractServer | None = None
        self._keys_version: tuple[int, float] | None = None
        self._config_mtime = self._mtime()
        self.breaker = BreakerConfig()
        self.pool = Pool([], Balancer(settings.policy))
        self.admin = Admin(self)
        self.backends_file = BackendsFile(None)
        self.backends_file.poll(settings.backends_file)  # at start, before the loop runs: read it here
        self._switching = asyncio.Lock()
        self._apply(settings)
        self.store = Store(settings.keys_db)
        self.accounting = Accounting(quotas=Quotas(workers=settings.workers))
        self.metrics = GatewayMetrics(lambda: self.pool)
        self.access_log = AccessLog()
        self.tls = backend_ssl_context(settings.backend_ca)
        self.upstream = ClientPool(  # API requests
            connect_timeout=settings.connect_timeout,
            keepalive=4.0,
            ssl_context=self.tls,
            max_head=settings.max_backend_head_bytes,
            max_body=settings.max_backend_body_bytes,
        )
        self.proxy = Proxy(
            settings=lambda: self.settings,
            pool=self.pool,
            upstream=self.upstream,
            metrics=self.metrics,
            on_failure=self.on_failure,
            accounting=self.accounting,
            access_log=self.access_log,
        )

    @property
    def draining(self) -> bool:
        """The worker is shutting down: not ready, and API requests get a 503."""
        return self.proxy.draining

    # Lifecycle
    async def start(self) -> Gateway:
        """Load keys, probe backends once, listen."""
        s = self.settings
        timeout = aiohttp.ClientTimeout(total=s.request_timeout, connect=s.connect_timeout)
        # Idle upstream connections are dropped before uvicorn's 5 s keep-alive timeout closes them
        # from the other side, which keeps requests off half-closed connections.
        connector = aiohttp.TCPConnector(
            limit=0, keepalive_timeout=4.0, enable_cleanup_closed=True, ssl=self.tls
        )
        self.client = aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False, skip_auto_headers=("User-Agent",)
        )
        await self.refresh_keys()
        for b in self.pool.backends:
            self._start_probe(self.client, b)
        # Give the first probes a moment so the gateway starts knowing its models.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._first_probes(), s.health_timeout + 0.5)
        loop = asyncio.get_running_loop()
        self._server = GuardedServer(
            self.handle,
            LimitsSource(lambda: self.settings),
            handler_cancellation=True,
            access_log=None,
            logger=ServerLog(),
        )
        self._tcp = await loop.create_server(
            self._server, s.host, s.port, backlog=4096, reuse_port=self.reuse_port or None
        )
        self.port = int(self._tcp.sockets[0].getsockname()[1])
        self._tasks.append(asyncio.create_task(self._upkeep()))
        return self

    async def _first_probes(self) -> None:
        while not all(b.healthy or b.failures or b.probe_error for b in self.pool.backends):
            await asyncio.sleep(0.02)

    async def drain(self, timeout: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish (up to ``shutdown_timeout``), flush, close."""
        self.proxy.draining = True
        if self._tcp is not None:
            self._tcp.close()
        limit = self.settings.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while self.proxy.active and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.proxy.active:
            log.warning(
                "drain: %d request(s) still running after %.0fs; cancelling", self.proxy.active, limit
            )
        await self.close()

    async def close(self) -> None:
        """Cancel background work, close connections, write pending usage and logs."""
        for task in [*self._tasks, *self._probes.values()]:
            task.cancel()
        for task in [*self._tasks, *self._probes.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks, self._probes = [], {}
        if self._server is not None:
            self._server.pre_shutdown()  # idle keep-alive connections close now, not after the 1 s wait
            await self._server.shutdown(1.0)
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
        self._server = self._tcp = None
        if self.client is not None:
            await self.client.close()
            self.client = None
        self.upstream.close()
        await self.flush_usage()
        self._flush_log()

    @property
    def url(self) -> str:
        """``http://host:port`` of this worker."""
        return f"http://{self.settings.host}:{self.port}"

    # Requests
    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Dispatch one request."""
        method, path = request.method, request.path
        if method == "POST" and path.startswith("/v1/"):
            return await self.proxy.handle(request)
        if path.startswith(ADMIN_PREFIX):
            return await self.admin.handle(request)
        try:
            if method == "GET" or method == "HEAD":
                if self.settings.ui and (path.startswith(ui_assets.PREFIX) or path == "/"):
                    page = self._ui(request)
                    if page is not None:
                        return page
                if path in ("/health", "/ready"):
                    return self._health(path == "/ready")
                if path == "/metrics" and self.settings.metrics:
                    if self.settings.metrics_auth and self.settings.require_keys:
                        self.accounting.keys.lookup(request.headers.get("Authorization"), required=True)
                    return web.Response(
                        body=generate_latest(self.metrics.registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST},
                    )
                if path == "/v1/models" or path.startswith("/v1/models/"):
                    return self._models(request, path[len("/v1/models/") :] if path != "/v1/models" else None)
            raise NotFoundError(f"{method} {path}: not found")
        except HaloError as exc:
            return error_response(exc)

    def _ui(self, request: web.BaseRequest) -> web.Response | None:
        """A UI file, the redirect of a browser's ``GET /``, or None (not the UI's)."""
        path = request.path
        if path == "/":
            if not ui_assets.wants_html(request.headers.get("Accept", "")):
                return None
            return web.Response(status=307, headers={"Location": ui_assets.PREFIX + "/"})
        asset = ui_assets.lookup(path)
        if asset is None:
            if path == ui_assets.PREFIX or path.startswith(ui_assets.PREFIX + "/"):
                return web.Response(status=404, text="not found", headers=ui_assets.SECURITY_HEADERS)
            return None
        gz = ui_assets.accepts_gzip(request.headers.get("Accept-Encoding", ""))
        return web.Response(body=asset.payload(gz), headers=asset.headers(gz))

    def on_failure(self, b: Backend, *, fatal: bool) -> None:
        """A request on ``b`` failed: count it; log an ejection."""
        self.metrics.errors.labels(b.url).inc()
        if b.failed(fatal=fatal):
            log.warning("backend %s ejected after %d failure(s)", b.url, b.failures)

    def backends_info(self) -> list[dict[str, Any]]:
        """Each backend's state, as /health and /admin/backends show it."""
        static = {spec.url for spec in self.settings.backends}
        return [
            {**b.describe(), "source": "static" if b.url in static else "file"} for b in self.pool.backends
        ]

    def _health(self, ready: bool) -> web.Response:
        backends = self.backends_info()
        ok = self.pool.ready() and not self.draining
        body = {
            "status": "ok" if ok else ("draining" if self.draining else "no healthy backend"),
            "healthy_backends": sum(1 for b in self.pool.backends if b.healthy),
            "queue_depth": self.pool.queue_depth(),
            "backends": backends,
        }
        return _json(body, 200 if ok or not ready else 503)

    def _models(self, request: web.BaseRequest, one: str | None) -> web.Response:
        auth = request.headers.get("Authorization")
        key = self.accounting.keys.lookup(auth, required=self.settings.require_keys)
        models = self.pool.models()
        if key is not None and key.models:
            models = [m for m in models if m in key.models]
        cards = [model_card(m) for m in models]
        return _json(model_list(cards) if one is None else find_card(cards, one))

    # Background upkeep
    def _start_probe(self, client: aiohttp.ClientSession, b: Backend) -> None:
        s = self.settings
        self._probes[b.url] = asyncio.create_task(
            probe_loop(client, b, s.health_interval, s.health_timeout, self._probed)
        )

    def _probed(self, b: Backend, ejected: bool) -> None:
        if ejected:
            self.metrics.errors.labels(b.url).inc()
        if b.healthy and self.pool.queue_depth():
            self.pool.wake()

    async def _upkeep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:  # backends first: a slow or locked keys db must not hold up discovery
                mtime = self._mtime()
                if mtime != self._config_mtime:
                    self._config_mtime = mtime
                    await self.reload_now()
                elif await self._poll_backends_file(self.settings.backends_file):
                    await self._switch(self.settings)
            except Exception:
                log.exception("gateway upkeep (backends) failed")
            try:
                await self.flush_usage()
                await self.refresh_keys()
            except Exception:  # upkeep must survive a bad moment (disk full, locked db)
                log.exception("gateway upkeep failed")
            self.upstream.prune()
            self._flush_log()

    async def flush_usage(self) -> None:
        """Write pending usage counters to the store (in a thread; put back on failure)."""
        usage = self.accounting.usage
        deltas = usage.take()
        if not deltas:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.store.add_usage, deltas)
        except Exception:
            usage.put_back(deltas)
            raise

    async def refresh_keys(self, *, force: bool = False) -> None:
        """Reload the key cache when the keys table changed (``force``: now, whatever the version)."""
        loop = asyncio.get_running_loop()
        version = await loop.run_in_executor(None, self.store.version)
        if force or version != self._keys_version:
            records = await loop.run_in_executor(None, self.store.active_hashes)
            self.accounting.keys.replace(records)
            self._keys_version = version

    def _flush_log(self) -> None:
        self.access_log.flush()

    def _mtime(self) -> float:
        if self.config_path is None:
            return 0.0
        try:
            return self.config_path.stat().st_mtime
        except OSError:
            return 0.0

    # Configuration
    def _apply(
        self, s: GatewaySettings, prepared: dict[str, Backend] | None = None
    ) -> tuple[list[Backend], list[Backend]]:
        """Apply ``s`` to the breakers, balancer and pool; the backends it added and removed."""
        self.breaker.eject_failures = s.eject_failures
        self.breaker.eject_time = s.eject_time
        self.breaker.slow_start = s.slow_start
        pool = self.pool
        pool.breaker = self.breaker
        if pool.balancer.name != s.policy or pool.balancer.chunk != s.prefix_chunk:
            pool.balancer = Balancer(s.policy, chunk=s.prefix_chunk, threshold=s.balance_threshold)
        pool.balancer.threshold = s.balance_threshold
        pool.queue_size, pool.queue_timeout, pool.workers = s.queue_size, s.queue_timeout, s.workers
        self.admin.key_hash = admin_key_hash(resolve_secret(s.admin_key, "--admin-key"))
        return pool.update(self._specs(s), prepared)

    def _specs(self, s: GatewaySettings) -> list[BackendSpec]:
        """The backends of ``s`` and then those of the backends file (a URL in both: the static one)."""
        static = {spec.url for spec in s.backends}
        return [*s.backends, *(spec for spec in self.backends_file.specs if spec.url not in static)]

    async def _poll_backends_file(self, path: Path | None) -> bool:
        """Re-read the backends file if it changed (off the event loop); True when its list changed."""
        return await asyncio.get_running_loop().run_in_executor(None, self.backends_file.poll, path)

    def _reprobe(self, added: list[Backend], removed: list[Backend]) -> None:
        """Stop probing removed backends and start on added ones (once started: start() probes all)."""
        for b in removed:
            task = self._probes.pop(b.url, None)
            if task is not None:
                task.cancel()
        if self.client is not None:
            for b in added:
                self._start_probe(self.client, b)

    def reload(self) -> None:
        """SIGHUP: schedule :meth:`reload_now`."""
        self._tasks.append(asyncio.create_task(self._reload_task()))

    async def _reload_task(self) -> None:
        await self.reload_now()

    async def reload_now(self) -> bool:
        """Re-read the config file and the backends file (SIGHUP or a change on disk).

        A bad config file keeps the running config (and a bad backends file its last good list).
        """
        if self.config_path is None:
            if self.settings.backends_file is None:
                return False
            await self._poll_backends_file(self.settings.backends_file)
            await self._switch(self.settings)
            return True
        try:
            new = load_settings(GatewaySettings, flags=self.flags, file=self.config_path)
            resolve_secret(new.admin_key, "--admin-key")
        except HaloError as exc:
            log.error("config reload failed, keeping the running config: %s", exc.message)
            return False
        fixed = ("host", "port", "workers", "keys_db")
        changed = [f for f in fixed if getattr(new, f) != getattr(self.settings, f)]
        if changed:
            log.warning("reload: %s need a restart to change", ", ".join(changed))
            new = new.model_copy(update={f: getattr(self.settings, f) for f in fixed})
        await self._poll_backends_file(new.backends_file)
        if not await self._switch(new):
            return False
        log.info("config reloaded: %d backend(s), policy %s", len(self.pool.backends), new.policy)
        return True

    async def _switch(self, new: GatewaySettings) -> bool:
        """Apply ``new`` and the backends file's list: new backends are probed before they join, so
        requests never see a pool without them and they get traffic only once healthy; removed ones
        finish their in-flight requests. False (nothing changed) when a new backend's key is missing."""
        async with self._switching:  # a SIGHUP and the upkeep's poll may come together
            known = {b.url for b in self.pool.backends}
            prepared: dict[str, Backend] = {}
            for spec in self._specs(new):
                if spec.url not in known:
                    try:
                        prepared[spec.url] = Backend(spec, self.breaker, api_key=spec.resolved_api_key())
                    except HaloError as exc:
                        log.error("backend update failed, keeping the running backends: %s", exc.message)
                        return False
            if prepared and self.client is not None:
                client = self.client
                await asyncio.gather(
                    *(probe_once(client, b, new.health_timeout, discover=True) for b in prepared.values())
                )
            self.settings = new
            self._reprobe(*self._apply(new, prepared))
            return True

