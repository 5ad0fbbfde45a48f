"""Backend state: in-flight count, concurrency limit, circuit breaker and slow start (pure, no I/O).

The circuit breaker follows Envoy's outlier detection and the classic three states:

- **closed**: traffic flows; ``eject_failures`` consecutive failures (connection errors, timeouts,
  502-504, a 500 that another backend did not repeat for the same request) open it. A refused
  connection opens it at once (the node is down, not busy). What a request causes (4xx, a 500 the
  next backend repeats) is nobody's failure: see :mod:`haloserve.gateway.proxy`.
- **open** (ejected): no traffic for ``eject_time * 2**(ejections-1)`` seconds (at most 5 minutes).
- **half-open**: after that, one trial request (or a successful active probe) decides: success
  closes the circuit, failure opens it again for longer.

A backend that comes back ramps from 10% to 100% of its weight over ``slow_start`` seconds, so a
cold node is not flooded with the traffic its peers were carrying.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from haloserve.config.gateway import BackendSpec

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
# A model's state on a backend (the ``status.value`` of its /v1/models card), best first: a request
# goes where its model is loaded, else where it is loading, else where it can be loaded; where it
# failed only when nothing else can take it.
LOADED, LOADING, UNLOADED, FAILED = "loaded", "loading", "unloaded", "failed"
RANK = {LOADED: 0, LOADING: 1, UNLOADED: 2, FAILED: 3}
_OTHER_RANK = RANK[UNLOADED]  # a state we do not know (a newer server's): as if it could be loaded
_MAX_EJECT = 300.0


@dataclass
class BreakerConfig:
    """Thresholds shared by every backend of a pool."""

    eject_failures: int = 3
    eject_time: float = 10.0
    slow_start: float = 10.0


@dataclass(eq=False)
class Backend:
    """One upstream and everything the balancer knows about it right now."""

    spec: BackendSpec
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    models: frozenset[str] = frozenset()
    model_states: dict[str, str] = field(default_factory=dict)  # models not loaded -> their state
    learned_limit: int = 0
    in_flight: int = 0
    healthy: bool = False  # set by the first successful probe or discovery
    admitted: bool = False  # it has been healthy once: until then failed probes are no ejection
    state: str = CLOSED
    failures: int = 0
    ejections: int = 0
    open_until: float = 0.0
    returned_at: float = 0.0
    trial_in_flight: bool = False
    requests: int = 0
    errors: int = 0
    api_key: str | None = None
    probe_error: str = ""  # why the last health probe failed (empty after a success)

    @property
    def url(self) -> str:
        """Base URL without ``/v1``."""
        return self.spec.url

    @property
    def limit(self) -> int:
        """Most requests in flight (0: unlimited): configured, else learned from the backend."""
        return self.spec.max_concurrency or self.learned_limit

    def serves(self, model: str) -> bool:
        """True when ``model`` is one of this backend's models."""
        return model in self.models

    def rank(self, model: str) -> int:
        """How ready ``model`` is here: 0 loaded, 1 loading, 2 unloaded (can load), 3 failed."""
        state = self.model_states.get(model)
        return 0 if state is None else RANK.get(state, _OTHER_RANK)

    def describe(self) -> dict[str, Any]:
        """Plain data for ``/health`` and ``/admin/backends`` (never the upstream key)."""
        return {
            "url": self.url,
            "healthy": self.healthy,
            "circuit": self.state,
            "in_flight": self.in_flight,
            "limit": self.limit,
            "weight": self.spec.weight,
            "requests": self.requests,
            "errors": self.errors,
            "models": sorted(self.models),
            "loaded": sorted(m for m in self.models if m not in self.model_states),
            "model_states": {m: self.model_states.get(m, LOADED) for m in sorted(self.models)},
            "labels": dict(self.spec.labels),
            "error": self.probe_error or None,
        }

    def routable(self, now: float) -> bool:
        """Healthy, circuit not open (a half-open circuit takes one trial at a time)."""
        if not self.healthy:
            return False
        if self.state == OPEN:
            if now < self.open_until:
                return False
            self.state = HALF_OPEN
        if self.state == HALF_OPEN:
            return not self.trial_in_flight
        return True

    def has_room(self) -> bool:
        """Below its concurrency limit."""
        limit = self.limit
        return limit <= 0 or self.in_flight < limit

    def effective_weight(self, now: float) -> float:
        """Weight scaled down during slow start (10% at return, 100% after ``slow_start`` s)."""
        w = self.spec.weight
        ramp = self.breaker.slow_start
        if ramp > 0 and self.returned_at and now - self.returned_at < ramp:
            w *= 0.1 + 0.9 * (now - self.returned_at) / ramp
        return w

    def load(self, now: float) -> float:
        """In-flight requests per unit of effective weight (what ``least`` minimises)."""
        return (self.in_flight + 1) / self.effective_weight(now)

    def acquire(self) -> None:
        """A request starts on this backend."""
        self.in_flight += 1
        self.requests += 1
        if self.state == HALF_OPEN:
            self.trial_in_flight = True

    def release(self) -> None:
        """A request on this backend ended (success or failure is reported separately)."""
        self.in_flight -= 1
        self.trial_in_flight = False

    def succeeded(self, now: float | None = None) -> None:
        """A request or probe worked: reset failures, close a half-open circuit (slow start begins)."""
        self.failures = 0
        if self.state != CLOSED:
            self.state = CLOSED
            self.returned_at = time.monotonic() if now is None else now

    def failed(self, now: float | None = None, *, fatal: bool = False) -> bool:
        """A request failed; returns True when this failure opened the circuit (an ejection)."""
        now = time.monotonic() if now is None else now
        self.errors += 1
        self.failures += 1
        if self.state == OPEN:
            return False
        if self.state == HALF_OPEN or fatal or self.failures >= self.breaker.eject_failures:
            self.ejections += 1
            self.state = OPEN
            self.open_until = now + min(_MAX_EJECT, self.breaker.eject_time * 2 ** (self.ejections - 1))
            return True
        return False

    def probe_ok(self, now: float | None = None) -> None:
        """An active probe succeeded: healthy again; an expired open circuit closes with slow start."""
        now = time.monotonic() if now is None else now
        was_down = not self.healthy
        self.healthy = self.admitted = True
        if (self.state == OPEN and now >= self.open_until) or self.state == HALF_OPEN:
            self.succeeded(now)
        elif was_down and self.returned_at == 0.0 and self.requests:
            self.returned_at = now

    def probe_failed(self, now: float | None = None) -> bool:
        """An active probe failed: unhealthy, and the circuit opens. Returns True on a new ejection.

        A backend never healthy yet (starting, loading its model, just discovered) only stays out:
        opening its circuit would keep it out for ``eject_time`` after its first 200.
        """
        self.healthy = False
        if not self.admitted:
            return False
        return self.failed(now, fatal=True)
