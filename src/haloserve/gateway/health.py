"""Active health probes, model discovery and concurrency learning, one task per backend.

- health: ``GET /health`` (a 404 there, as from Ollama, falls back to ``/v1/models``);
- models: ``GET /v1/models`` on every probe: the model ids (unless the backend's models are
  configured) and each model's ``status.value`` (``loaded``, ``loading``, ``unloaded``, ``failed``)
  as multi-model servers report it (llama-server's router mode, ``halo serve --models-dir``); a model
  without a status (llama-server, vLLM, Ollama) is loaded;
- concurrency, unless configured: ``total_slots`` of ``GET /props`` (llama-server and ``halo serve``),
  else the number of entries of ``GET /slots`` (llama-server), else ``halo_slots_total`` in
  ``GET /metrics`` (``halo serve``); a backend that tells none of them is not limited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from typing import Any

import aiohttp

from haloserve.gateway.backends import LOADED, Backend
from haloserve.gateway.http1 import untrusted_certificate

log = logging.getLogger("haloserve.gateway")
_SLOTS_TOTAL = re.compile(rb"^halo_slots_total(?:\{[^}]*\})?\s+([0-9.]+)", re.M)
_REDISCOVER_EVERY = 6  # probes between refreshes of the slot count (models: every probe)


def _headers(b: Backend) -> dict[str, str]:
    return {"Authorization": f"Bearer {b.api_key}"} if b.api_key else {}


async def _get(session: aiohttp.ClientSession, b: Backend, path: str, timeout: float) -> tuple[int, bytes]:
    async with session.get(
        b.url + path, headers=_headers(b), timeout=aiohttp.ClientTimeout(total=timeout)
    ) as resp:
        return resp.status, await resp.read()


async def check_health(session: aiohttp.ClientSession, b: Backend, timeout: float) -> bool:
    """True when the backend answers its health check with 200."""
    status, _ = await _get(session, b, "/health", timeout)
    if status == 404:
        status, _ = await _get(session, b, "/v1/models", timeout)
    return status == 200


def parse_models(data: Any) -> tuple[frozenset[str], dict[str, str]] | None:
    """Model ids of a ``/v1/models`` answer and the states of those not loaded (None: not a list)."""
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return None
    ids: set[str] = set()
    states: dict[str, str] = {}
    for m in items:
        if not isinstance(m, dict) or "id" not in m:
            continue
        ident = str(m["id"])
        ids.add(ident)
        status = m.get("status")
        value = status.get("value") if isinstance(status, dict) else None
        if isinstance(value, str) and value != LOADED:
            states[ident] = value
    return frozenset(ids), states


async def discover_models(session: aiohttp.ClientSession, b: Backend, timeout: float) -> None:
    """Read ``/v1/models`` into ``b.models`` (unless configured) and ``b.model_states``."""
    import json

    status, body = await _get(session, b, "/v1/models", timeout)
    listed = parse_models(json.loads(body)) if status == 200 else None
    if listed is None:
        return
    ids, states = listed
    if not b.spec.models:
        b.models = ids
    b.model_states = {m: v for m, v in states.items() if m in b.models}


async def learn_limit(session: aiohttp.ClientSession, b: Backend, timeout: float) -> int:
    """Slots the backend says it has (0 when it says nothing)."""
    import json

    for path in ("/props", "/slots"):
        try:
            status, body = await _get(session, b, path, timeout)
            if status != 200:
                continue
            data: Any = json.loads(body)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("total_slots"), int):
            return int(data["total_slots"])
        if isinstance(data, list) and data:
            return len(data)
    try:
        status, body = await _get(session, b, "/metrics", timeout)
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return 0
    m = _SLOTS_TOTAL.search(body) if status == 200 else None
    return int(float(m.group(1))) if m else 0


async def probe_once(
    session: aiohttp.ClientSession, b: Backend, timeout: float, *, discover: bool
) -> tuple[bool, bool]:
    """One probe (and discovery when asked). Returns (healthy, newly ejected)."""
    reason = "the health check did not answer 200"
    try:
        ok = await check_health(session, b, timeout)
        learn = ok and (discover or not b.models) and not b.spec.max_concurrency
        if ok:
            if not b.spec.models:
                await discover_models(session, b, timeout)
            else:  # configured models: their states are a bonus, a backend without them is still fine
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                    await discover_models(session, b, timeout)
        if learn:
            b.learned_limit = await learn_limit(session, b, timeout)
    except asyncio.TimeoutError:
        reason, ok = f"no answer within {timeout:g}s", False
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        reason, ok = _reason(exc), False
    if ok:
        b.probe_error = ""
        was = b.healthy
        b.probe_ok()
        if not was:
            log.info("backend %s healthy: models %s, limit %s", b.url, sorted(b.models), b.limit or "none")
        return True, False
    was_healthy, new_reason = b.healthy, reason != b.probe_error
    b.probe_error = reason
    ejected = b.probe_failed()
    if was_healthy:
        log.warning("backend %s failed its health probe (%s); ejected", b.url, reason)
    elif new_reason:  # said once per cause, not every probe
        log.warning("backend %s is not healthy: %s", b.url, reason)
    return False, ejected


def _reason(exc: BaseException) -> str:
    """A one-line cause for a failed probe (certificate problems named as such)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert = exc.certificate_error
        return untrusted_certificate(getattr(cert, "verify_message", "") or str(cert))
    return (str(exc).strip() or type(exc).__name__).splitlines()[0]


async def probe_loop(
    session: aiohttp.ClientSession,
    b: Backend,
    interval: float,
    timeout: float,
    on_change: Callable[[Backend, bool], None],
) -> None:
    """Probe ``b`` every ``interval`` seconds until cancelled; ``on_change(b, ejected)`` after each."""
    n = 0
    while True:
        try:
            healthy, ejected = await probe_once(session, b, timeout, discover=n % _REDISCOVER_EVERY == 0)
            on_change(b, ejected)
        except Exception:  # a probe must never stop probing (odd replies are logged, not fatal)
            log.exception("probe of %s failed unexpectedly", b.url)
            healthy = False
        n += 1
        # Unhealthy backends are re-probed sooner so a restarted node returns quickly.
        await asyncio.sleep(interval if healthy else min(interval, 1.0))
