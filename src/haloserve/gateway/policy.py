"""Balancing policies, registered by name: pure choices over the backends that may take a request.

Each policy gets the candidates (healthy, circuit not open, serving the model, below their limit)
and the request's routing facts, and returns one candidate.

``prefix`` is a cache-aware policy in the manner of SGLang's router: the prompt is cut into
character chunks whose chained hashes are remembered per backend, so the longest known prefix of a
new prompt names the backend whose KV cache holds it. Load overrides the cache when the preferred
backend has ``balance_threshold`` more requests in flight than the least busy one. A prompt with no
known prefix goes to the least busy backend, and among equals to the one with the least cached so
far, so new conversations spread out. A session id (header or ``user``)
pins a conversation to the backend that served it last while that backend is available.
"""

from __future__ import annotations

import hashlib
import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class Candidate(Protocol):
    """What a policy may read of a backend."""

    @property
    def url(self) -> str:
        """Identity of the backend."""
        ...

    in_flight: int

    def load(self, now: float) -> float:
        """In-flight per unit of effective weight."""
        ...

    def effective_weight(self, now: float) -> float:
        """Weight after slow start."""
        ...


@dataclass
class RouteInfo:
    """The routing facts of one request (computed once, only when the policy needs them)."""

    model: str = ""
    prompt: str = ""
    session: str | None = None


@dataclass
class Decision:
    """The policy's choice and whether the prefix cache decided it."""

    index: int
    prefix_hit: bool = False


def least(cands: Sequence[Candidate], now: float, rng: random.Random) -> int:
    """Index of the least loaded candidate (ties broken at random, so equal backends share)."""
    best = min(c.load(now) for c in cands)
    ties = [i for i, c in enumerate(cands) if c.load(now) == best]
    return ties[0] if len(ties) == 1 else rng.choice(ties)


def prompt_chunks(prompt: str, size: int, limit: int = 64) -> list[int]:
    """Chained hashes of the first ``limit`` chunks of ``size`` characters (last may be partial)."""
    out: list[int] = []
    h = 0
    for start in range(0, min(len(prompt), size * limit), size):
        h = hash((h, prompt[start : start + size]))
        out.append(h)
    return out


def rendezvous(key: str, cands: Sequence[Candidate], now: float) -> int:
    """Highest-random-weight choice: stable across processes, moves little when backends change."""
    best, best_i = -1.0, 0
    for i, c in enumerate(cands):
        digest = hashlib.blake2b(f"{c.url}\x00{key}".encode(), digest_size=8).digest()
        score = (int.from_bytes(digest, "big") + 1) / 2**64
        score = score ** (1.0 / c.effective_weight(now))
        if score > best:
            best, best_i = score, i
    return best_i


@dataclass
class PrefixIndex:
    """Chunk hash -> backend URL, least recently used first out (bounded memory)."""

    capacity: int = 200_000
    entries: OrderedDict[int, str] = field(default_factory=OrderedDict)
    sizes: dict[str, int] = field(default_factory=dict)

    def longest(self, chunks: list[int]) -> tuple[str | None, int]:
        """The backend holding the longest known prefix and its length in chunks."""
        for depth in range(len(chunks), 0, -1):
            url = self.entries.get(chunks[depth - 1])
            if url is not None:
                return url, depth
        return None, 0

    def insert(self, chunks: list[int], url: str) -> None:
        """Remember that ``url`` now caches these chunks."""
        entries, sizes = self.entries, self.sizes
        for h in chunks:
            old = entries.get(h)
            if old != url:
                if old is not None:
                    sizes[old] -= 1
                sizes[url] = sizes.get(url, 0) + 1
            entries[h] = url
            entries.move_to_end(h)
        while len(entries) > self.capacity:
            _, gone = entries.popitem(last=False)
            sizes[gone] -= 1

    def size(self, url: str) -> int:
        """Chunks currently attributed to ``url`` (its share of the remembered cache)."""
        return self.sizes.get(url, 0)


class Balancer:
    """A policy by name plus the state it keeps (round-robin counter, prefix index, sessions)."""

    def __init__(
        self,
        name: str,
        *,
        chunk: int = 256,
        threshold: int = 2,
        seed: int | None = None,
        sessions: int = 100_000,
    ) -> None:
        if name not in POLICIES:
            raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
        self.name = name
        self.chunk = chunk
        self.threshold = threshold
        self.rng = random.Random(seed)
        self.counter = 0
        self.index = PrefixIndex()
        self.sessions: OrderedDict[str, str] = OrderedDict()
        self.max_sessions = sessions
        self._choose: Callable[[Balancer, Sequence[Candidate], RouteInfo, float], Decision] = POLICIES[name]

    @property
    def needs_prompt(self) -> bool:
        """True when the policy reads the prompt text (only ``prefix``)."""
        return self.name == "prefix"

    def choose(self, cands: Sequence[Candidate], info: RouteInfo, now: float) -> Decision:
        """Pick one of ``cands`` (non-empty) for this request; sessions stick where they can."""
        if info.session:
            url = self.sessions.get(info.session)
            for i, c in enumerate(cands):
                if c.url == url and not self._overloaded(cands, i, now):
                    self.sessions.move_to_end(info.session)
                    return Decision(i, prefix_hit=True)
        decision = self._choose(self, cands, info, now)
        if info.session:
            self.sessions[info.session] = cands[decision.index].url
            self.sessions.move_to_end(info.session)
            if len(self.sessions) > self.max_sessions:
                self.sessions.popitem(last=False)
        return decision

    def _overloaded(self, cands: Sequence[Candidate], i: int, now: float) -> bool:
        low = min(c.in_flight for c in cands)
        return cands[i].in_flight - low > self.threshold


def _least(b: Balancer, cands: Sequence[Candidate], info: RouteInfo, now: float) -> Decision:
    return Decision(least(cands, now, b.rng))


def _round_robin(b: Balancer, cands: Sequence[Candidate], info: RouteInfo, now: float) -> Decision:
    # Smooth weighted round robin would need per-backend state; counter over weights is enough here.
    b.counter += 1
    weights = [c.effective_weight(now) for c in cands]
    if all(w == weights[0] for w in weights):
        return Decision(b.counter % len(cands))
    total = sum(weights)
    point = (b.counter * 0.6180339887) % 1.0 * total  # golden-ratio stride spreads evenly by weight
    for i, w in enumerate(weights):
        point -= w
        if point < 0:
            return Decision(i)
    return Decision(len(cands) - 1)


def _random(b: Balancer, cands: Sequence[Candidate], info: RouteInfo, now: float) -> Decision:
    weights = [c.effective_weight(now) for c in cands]
    return Decision(b.rng.choices(range(len(cands)), weights=weights)[0])


def _prefix(b: Balancer, cands: Sequence[Candidate], info: RouteInfo, now: float) -> Decision:
    if not info.prompt:
        return _least(b, cands, info, now)
    chunks = prompt_chunks(info.prompt, b.chunk)
    url, _depth = b.index.longest(chunks)
    choice: int | None = None
    hit = False
    if url is not None:
        for i, c in enumerate(cands):
            if c.url == url:
                if not b._overloaded(cands, i, now):
                    choice, hit = i, True
                break
    if choice is None:
        # A new prefix goes where the least is cached among the least busy (SGLang's rule), so
        # distinct conversations spread over the backends instead of evicting each other.
        low = min(c.load(now) for c in cands)
        idle = [i for i, c in enumerate(cands) if c.load(now) == low]
        choice = min(idle, key=lambda i: (b.index.size(cands[i].url), b.rng.random()))
    b.index.insert(chunks, cands[choice].url)
    return Decision(choice, prefix_hit=hit)


POLICIES: dict[str, Callable[[Balancer, Sequence[Candidate], RouteInfo, float], Decision]] = {
    "prefix": _prefix,
    "least": _least,
    "round-robin": _round_robin,
    "random": _random,
}
