"""Keys, quotas and usage on the hot path: in-memory lookups, counters batched to SQLite off it.

- :class:`KeyCache` maps the SHA-256 of a presented key to its record; the gateway reloads it from
  the store when the keys table changes (checked every second), so a revoked key stops working
  within about a second in every worker.
- :class:`Quotas` enforces requests/min and tokens/min per key with a sliding window (the current
  and previous minute, weighted, as nginx and Cloudflare approximate it). With ``--workers N`` each
  worker enforces ``1/N`` of each limit: connections spread evenly over workers, so the sum is the
  limit to within a request or two per worker. Tokens are reserved at admission (an estimate of the
  prompt plus ``max_tokens``, see :func:`reserve_estimate`) and settled to the real count when the
  request ends, as LLM API rate limiters do: charging only after completion let 20 concurrent
  requests through a 20 tokens/min key (240 tokens).
- :class:`UsageBuffer` accumulates per (day, key, model) counters and hands them to the store in one
  transaction per flush (every second and at shutdown).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from haloserve.errors import AuthenticationError, PermissionDeniedError, RateLimitError
from haloserve.gateway.store import ANONYMOUS, KeyRecord, UsageDelta, hash_key

_UNSEEN: Any = object()
_MEMO_MAX_HEADER = 256  # "Bearer halo-..." is 55 characters


class KeyCache:
    """hash -> record of the active keys."""

    def __init__(self, records: dict[str, KeyRecord] | None = None) -> None:
        self.by_hash: dict[str, KeyRecord] = dict(records or {})
        self._memo: dict[str, Any] = {}

    def replace(self, records: dict[str, KeyRecord]) -> None:
        """Swap in a fresh copy from the store."""
        self.by_hash = dict(records)
        self._memo = {}

    def lookup(self, authorization: str | None, *, required: bool) -> KeyRecord | None:
        """The key named by an ``Authorization: Bearer`` header.

        With keys not required, a missing or unknown key is anonymous (OpenAI clients always send
        some key); with keys required, it is a 401.
        """
        if not authorization:
            if required:
                raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'")
            return None
        rec = self._memo.get(authorization, _UNSEEN)
        if rec is _UNSEEN:
            scheme, _, secret = authorization.partition(" ")
            rec = self.by_hash.get(hash_key(secret.strip())) if scheme.lower() == "bearer" else None
            # Only header values the size of a key are remembered: 10,000 junk headers of 8 KB
            # each would otherwise pin 80 MB.
            if len(self._memo) < 10_000 and len(authorization) <= _MEMO_MAX_HEADER:
                self._memo[authorization] = rec
        if rec is None:
            if required:
                raise AuthenticationError("invalid API key")
            return None
        return rec


def check_model(rec: KeyRecord | None, model: str) -> None:
    """403 when the key is limited to other models."""
    if rec is not None and rec.models and model not in rec.models:
        raise PermissionDeniedError(f"key {rec.name!r} may not use model {model!r}", param="model")


def reserve_estimate(obj: dict[str, Any], prompt: str, default_completion: int | None) -> int:
    """Tokens to hold for a request: its prompt (UTF-8 bytes / 4) plus the most it may generate.

    The most it may generate is ``max_completion_tokens`` or ``max_tokens`` (times ``n``), else
    ``default_completion`` (``--reserve-tokens``); ``None`` for requests that generate nothing
    (embeddings). The gateway has no tokenizer; the real count replaces the estimate at the end.
    """
    prompt_tokens = math.ceil(len(prompt.encode("utf-8", "surrogatepass")) / 4)
    if default_completion is None:
        return prompt_tokens
    completion = default_completion
    for name in ("max_completion_tokens", "max_tokens"):
        value = obj.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            completion = value
            break
    n = obj.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > 1:
        completion *= min(n, 128)
    return prompt_tokens + completion


@dataclass(frozen=True)
class Reservation:
    """Tokens held for one admitted request until :meth:`Quotas.settle`."""

    minute: int
    tokens: int


@dataclass
class _Window:
    minute: int = 0
    req_now: int = 0
    req_prev: int = 0
    tok_now: int = 0
    tok_prev: int = 0

    def roll(self, minute: int) -> None:
        if minute != self.minute:
            if minute == self.minute + 1:
                self.req_prev, self.tok_prev = self.req_now, self.tok_now
            else:
                self.req_prev = self.tok_prev = 0
            self.req_now = self.tok_now = 0
            self.minute = minute


@dataclass
class Quotas:
    """Per-key sliding-window limits of requests and tokens per minute."""

    workers: int = 1
    windows: dict[str, _Window] = field(default_factory=dict)

    def _window(self, key_id: str, now: float) -> tuple[_Window, float]:
        w = self.windows.get(key_id)
        if w is None:
            w = self.windows[key_id] = _Window(minute=int(now // 60))
        w.roll(int(now // 60))
        return w, 1.0 - (now % 60) / 60.0

    def admit(self, rec: KeyRecord, tokens: int = 1, now: float | None = None) -> Reservation | None:
        """Count one request and hold ``tokens`` for it, or raise 429 naming the limit it would pass.

        A request larger than the whole tokens/minute limit holds the whole limit: it waits for a
        window with nothing used or held, then runs alone (its excess is charged when it ends).
        """
        if not rec.rpm and not rec.tpm:
            return None
        now = time.time() if now is None else now
        w, prev_share = self._window(rec.id, now)
        retry = 60.0 - now % 60
        held: Reservation | None = None
        if rec.rpm:
            limit = max(1.0, rec.rpm / self.workers)
            if w.req_now + w.req_prev * prev_share + 1 > limit:
                raise RateLimitError(
                    f"key {rec.name!r} is over its limit of {rec.rpm} requests per minute",
                    retry_after=retry,
                    code="requests_per_minute_exceeded",
                )
        if rec.tpm:
            limit = max(1.0, rec.tpm / self.workers)
            want = max(1, min(tokens, int(limit)))
            used = w.tok_now + w.tok_prev * prev_share  # finished requests and held reservations
            if used + want > limit:
                raise RateLimitError(
                    f"key {rec.name!r} is over its limit of {rec.tpm} tokens per minute"
                    f" (this request may use up to {tokens})",
                    retry_after=_tokens_free_in(w, prev_share, used + want - limit, now),
                    code="tokens_per_minute_exceeded",
                )
            w.tok_now += want
            held = Reservation(w.minute, want)
        w.req_now += 1
        return held

    def settle(self, rec: KeyRecord, held: Reservation | None, tokens: int, now: float | None = None) -> None:
        """A request ended having used ``tokens``: refund what it held beyond that, charge any excess.

        A refund goes back to the minute the reservation was charged to; an excess is charged now.
        """
        if held is None:
            self.add_tokens(rec, tokens, now)
            return
        w, _ = self._window(rec.id, time.time() if now is None else now)
        delta = tokens - held.tokens
        if delta > 0:
            w.tok_now += delta
        elif held.minute == w.minute:
            w.tok_now = max(0, w.tok_now + delta)
        elif held.minute == w.minute - 1:
            w.tok_prev = max(0, w.tok_prev + delta)

    def add_tokens(self, rec: KeyRecord, tokens: int, now: float | None = None) -> None:
        """Charge tokens a request used that held no reservation."""
        if rec.tpm and tokens:
            w, _ = self._window(rec.id, time.time() if now is None else now)
            w.tok_now += tokens


def _tokens_free_in(w: _Window, prev_share: float, excess: float, now: float) -> float:
    """Seconds until ``excess`` tokens of the window's count have slid out, if nothing else comes."""
    # The previous minute's count fades linearly over this minute, then this minute's over the next.
    rest = 60.0 - now % 60
    if w.tok_prev * prev_share >= excess and w.tok_prev:
        return min(rest, excess * 60.0 / w.tok_prev)
    excess -= w.tok_prev * prev_share
    if not w.tok_now:
        return rest
    return rest + min(60.0, excess * 60.0 / w.tok_now)


class UsageBuffer:
    """Usage counters waiting to be written."""

    def __init__(self) -> None:
        self.pending: dict[tuple[str, str, str], UsageDelta] = {}
        self._day = ""
        self._day_until = 0.0

    def today(self, now: float) -> str:
        """UTC day of ``now``, cached until midnight."""
        if now >= self._day_until:
            self._day = time.strftime("%Y-%m-%d", time.gmtime(now))
            self._day_until = (now // 86400 + 1) * 86400
        return self._day

    def add(
        self,
        key: KeyRecord | None,
        model: str,
        prompt: int,
        completion: int,
        *,
        error: bool = False,
        now: float | None = None,
    ) -> None:
        """Count one finished request."""
        day = self.today(time.time() if now is None else now)
        k = (day, key.id if key is not None else ANONYMOUS, model)
        d = self.pending.get(k)
        if d is None:
            d = self.pending[k] = UsageDelta()
        d.requests += 1
        d.errors += error
        d.prompt_tokens += prompt
        d.completion_tokens += completion

    def take(self) -> dict[tuple[str, str, str], UsageDelta]:
        """Everything pending, leaving the buffer empty."""
        out, self.pending = self.pending, {}
        return out

    def put_back(self, deltas: dict[tuple[str, str, str], UsageDelta]) -> None:
        """Return counters a failed write could not store (they are retried on the next flush)."""
        for k, d in deltas.items():
            mine = self.pending.setdefault(k, UsageDelta())
            mine.requests += d.requests
            mine.errors += d.errors
            mine.prompt_tokens += d.prompt_tokens
            mine.completion_tokens += d.completion_tokens


@dataclass(slots=True)
class Accounting:
    """A worker's keys, quotas and usage counters: what each request is checked and charged against."""

    keys: KeyCache = field(default_factory=KeyCache)
    quotas: Quotas = field(default_factory=Quotas)
    usage: UsageBuffer = field(default_factory=UsageBuffer)
