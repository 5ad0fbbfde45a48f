"""The load generator: drives each level (a concurrency or an arrival rate) and measures every request.

One asyncio process, one shared aiohttp session with no connection limit, and a client loop that only
timestamps reads (see ``client.py``), so that hundreds of concurrent streams cost it little.
Arrivals in rate mode follow vLLM: gaps drawn from a gamma distribution of shape ``burstiness`` and
scale ``1 / (rate x burstiness)`` (Poisson for 1), rescaled so that N requests span N / rate seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import math
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from haloserve.bench.client import (
    STREAM_BUFFER,
    Call,
    Outcome,
    record_steps,
    send,
    timed_connector,
    trace_config,
)
from haloserve.bench.metrics import level_metrics, parse_slo
from haloserve.bench.preflight import environment, preflight
from haloserve.bench.schema import BenchResult, LevelResult, RequestRecord
from haloserve.bench.workloads import (
    WORKLOADS,
    Conversation,
    WorkloadSpec,
    build_messages,
    estimate_tokens,
    messages_to_prompt,
)
from haloserve.config.bench import BenchSettings


class ProgressSink(Protocol):
    """Receives live events from a run (the CLI draws a progress bar from them)."""

    def level_started(self, label: str, total: int | None, duration: float | None) -> None:
        """A level's measured phase begins."""

    def request_done(self, record: RequestRecord) -> None:
        """A measured request ended, well or not."""

    def level_finished(self, level: LevelResult) -> None:
        """A level ended and its metrics are known."""


class NullSink:
    """A sink that ignores everything."""

    def level_started(self, label: str, total: int | None, duration: float | None) -> None:
        """Ignore."""

    def request_done(self, record: RequestRecord) -> None:
        """Ignore."""

    def level_finished(self, level: LevelResult) -> None:
        """Ignore."""


@dataclass(frozen=True)
class LevelPlan:
    """How one level is driven."""

    mode: str
    value: float | None
    label: str
    num_prompts: int | None
    duration: float | None
    max_concurrency: int | None = None


def plan_levels(s: BenchSettings) -> list[LevelPlan]:
    """The levels of a run, in order, with their request counts (pure)."""
    plans = []
    if s.rate:
        for r in s.rate:
            inf = math.isinf(r)
            default = 100 if inf else max(20, math.ceil(r * 30))
            n = s.num_prompts or (None if s.duration else default)
            label = "rate=inf" if inf else f"rate={r:g}/s"
            plans.append(LevelPlan("rate", None if inf else r, label, n, s.duration, s.max_concurrency))
    else:
        for c in s.concurrency or [1, 4, 16]:
            n = s.num_prompts or (None if s.duration else max(8, 4 * c))
            plans.append(LevelPlan("concurrency", float(c), f"c={c}", n, s.duration))
    return plans


def arrival_offsets(n: int, rate: float | None, burstiness: float, rng: random.Random) -> list[float]:
    """Send times (seconds from the level start) of ``n`` arrivals, as vLLM draws them."""
    if rate is None or n == 0:
        return [0.0] * n
    theta = 1.0 / (rate * burstiness)
    offsets = list(itertools.accumulate(rng.gammavariate(burstiness, theta) for _ in range(n)))
    if offsets[-1] > 0:
        scale = (n / rate) / offsets[-1]
        offsets = [o * scale for o in offsets]
    return offsets


def endless_offsets(rate: float | None, burstiness: float, rng: random.Random) -> Iterator[float]:
    """Arrival times without an end (``--duration`` runs); not rescaled."""
    t = 0.0
    while True:
        if rate is not None:
            t += rng.gammavariate(burstiness, 1.0 / (rate * burstiness))
        yield t


# Container objects a level may allocate before a collection runs anyway (a long --duration run
# with reference cycles would otherwise grow without bound); 1,000 requests leave about 10k.
GC_BUDGET = 2_000_000


def _gc_pause() -> None:
    """No cyclic GC while a level runs: collections stall the loop for milliseconds and found nothing.

    Measured at 256 streams: 105 collections in a 10 s level, up to 4.3 ms each, 0 objects freed;
    every token that arrived meanwhile was stamped late by that much. Reference counting still
    frees everything that is not in a cycle; :func:`_gc_check` bounds what cycles could pile up.
    """
    gc.collect()
    gc.freeze()  # what exists now is never scanned again
    gc.disable()


def _gc_check() -> None:
    """Collect (once) if a level has allocated more than ``GC_BUDGET`` container objects."""
    if not gc.isenabled() and gc.get_count()[0] > GC_BUDGET:
        gc.collect()
        gc.freeze()


def _gc_resume() -> None:
    """Back to normal collection after a level."""
    gc.unfreeze()
    gc.enable()


class _Parser:
    """Turns raw outcomes into records on the side, a few events per loop turn, so the loop never stalls.

    Parsing a finished stream costs about 5 µs an event. Done inline, a burst of streams ending
    together (every stream of a concurrency level does) would block the loop for the whole burst and
    delay the tokens of the streams still running; here the longest stall is one slice of one
    request (``client.PARSE_SLICE`` events, ~40 µs).
    """

    def __init__(self, sink: ProgressSink) -> None:
        self.sink = sink
        self.queue: asyncio.Queue[tuple[Any, ...] | None] = asyncio.Queue()
        self.failure: BaseException | None = None
        self.task = asyncio.create_task(self._run())

    def submit(self, st: _LevelState, call: Call, out: Outcome, index: int, session: int, turn: int) -> Any:
        """Queue one outcome; returns a future of ``(record, text)``."""
        fut = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((st, call, out, index, session, turn, fut))
        return fut

    async def _run(self) -> None:
        while (item := await self.queue.get()) is not None:
            st, call, out, index, session, turn, fut = item
            if call is None:  # a drain marker
                fut.set_result(None)
                continue
            try:
                rec, text = await self._one(st, call, out, index, session, turn)
            except Exception as exc:  # a bug here must end the run with its error, not hang it
                self.failure = self.failure or exc
                if not fut.done():
                    fut.set_exception(exc)
                continue
            if not fut.done():
                fut.set_result((rec, text))
            _gc_check()
            await asyncio.sleep(0)

    async def _one(
        self, st: _LevelState, call: Call, out: Outcome, index: int, session: int, turn: int
    ) -> tuple[RequestRecord, str]:
        steps = record_steps(call, out, index, st.t0, session, turn)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                rec, text = done.value
                break
            await asyncio.sleep(0)
        if st.record:
            st.records.append(rec)
            self.sink.request_done(rec)
        return rec, text

    async def drain(self) -> None:
        """Wait until everything queued so far is parsed; re-raise the first failure of the parser."""
        fut = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((_LevelState(0.0, 0, None, False), None, None, 0, 0, 0, fut))
        await fut
        if self.failure is not None:
            raise self.failure

    async def close(self) -> None:
        """Parse what is left and stop."""
        self.queue.put_nowait(None)
        await self.task


@dataclass
class _LevelState:
    t0: float
    limit: int | None
    deadline: float | None
    record: bool
    issued: int = 0
    sessions: int = 0
    records: list[RequestRecord] = field(default_factory=list)

    def may_issue(self) -> bool:
        if self.limit is not None and self.issued >= self.limit:
            return False
        return self.deadline is None or time.perf_counter() < self.deadline


class Runner:
    """Runs every level of one benchmark against one server."""

    def __init__(self, settings: BenchSettings, sink: ProgressSink | None = None) -> None:
        self.s = settings
        self.sink = sink or NullSink()
        self.spec = WorkloadSpec(
            input_len=settings.input_len,
            output_len=settings.output_len,
            length_dist=settings.length_dist,
            length_spread=settings.length_spread,
            prefix_len=settings.prefix_len,
            num_prefixes=settings.num_prefixes,
            turns=settings.turns if settings.workload in ("multi-turn", "file") else 1,
            dataset=settings.dataset,
        )
        self.slo = parse_slo(settings.slo)
        self.run_id = uuid.uuid4().hex[:8]
        self.model = settings.model or ""
        self.headers = {"Content-Type": "application/json", "User-Agent": "halo-bench"}
        if settings.api_key:
            self.headers["Authorization"] = f"Bearer {settings.api_key}"
        path = "/v1/chat/completions" if settings.endpoint == "chat" else "/v1/completions"
        self.api_url = settings.url + path
        self.extra: dict[str, Any] = json.loads(settings.extra_body) if settings.extra_body else {}
        self.http: aiohttp.ClientSession | None = None
        self.fresh: aiohttp.ClientSession | None = None  # one connection per request (see run())
        self.stale_keepalive = False  # the server closed a kept-alive connection under a request
        self.resent = 0  # requests sent again because of that (warm-up included)
        self._parser: _Parser | None = None

    async def run(self) -> BenchResult:
        """Check the server, run every level, and return the full result."""
        # Keep-alive as vLLM's client: a new connection per request costs the client ~1 ms of loop time
        # (which delays the arrival stamps of every other stream) and the server an accept. Idle
        # connections are dropped before servers drop them (uvicorn and llama-server after 5 s).
        if self.s.keepalive:
            connector = timed_connector(limit=0, ttl_dns_cache=300, keepalive_timeout=4)
        else:
            connector = timed_connector(limit=0, ttl_dns_cache=300, force_close=True)
        async with contextlib.AsyncExitStack() as stack:
            http = self.http = await stack.enter_async_context(self._session(connector))
            if self.s.keepalive:
                # For servers that close kept-alive connections under our feet: a request that hit
                # one is re-sent through this session, and after that every request goes through it.
                fresh = timed_connector(limit=0, ttl_dns_cache=300, force_close=True)
                self.fresh = await stack.enter_async_context(self._session(fresh))
            info, notes = await preflight(http, self.s, self.headers)
            self.model = info.model
            env = environment(info)
            WORKLOADS[self.s.workload](self.spec, random.Random(self.s.seed))  # fail early on a bad dataset
            levels = []
            self._parser = _Parser(self.sink)
            try:
                for i, plan in enumerate(plan_levels(self.s)):
                    levels.append(await self.run_level(plan, i))
            finally:
                await self.parser.close()
        if self.resent:
            notes.append(
                f"the server closed kept-alive connections as requests went out ({self.resent} request(s), "
                "warm-up included, sent again on a new connection, not counted as failures); from then on "
                "every request had a connection of its own (llama-server closes connections after "
                "streamed responses)"
            )
        label = self.s.label or f"{self.model} @ {self.s.url.split('://', 1)[-1]}"
        return BenchResult(
            label=label, settings=self.s.public_dict(), environment=env, notes=notes, levels=levels
        )

    def _session(self, connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            trace_configs=[trace_config()],
            # Streams are read once they end (arrivals are stamped by the protocol), so a stream's whole
            # body must fit below the reader's high-water mark or aiohttp would pause the socket.
            read_bufsize=STREAM_BUFFER,
        )

    @property
    def parser(self) -> _Parser:
        """The record parser of the running benchmark."""
        assert self._parser is not None, "Runner.run() starts the parser"
        return self._parser

    async def run_level(self, plan: LevelPlan, index: int) -> LevelResult:
        """Warm up, then drive one level and compute its metrics."""
        width = int(plan.value or 1) if plan.mode == "concurrency" else (plan.max_concurrency or 64)
        if self.s.keepalive and not self.stale_keepalive:
            await self._open_connections(width)
        if self.s.warmup:
            width = min(self.s.warmup, int(plan.value or self.s.warmup) if plan.mode == "concurrency" else 8)
            warm = _LevelState(time.perf_counter(), self.s.warmup, None, record=False)
            convos = WORKLOADS[self.s.workload](self.spec, random.Random(self.s.seed + 1_000_003))
            await self._workers(warm, convos, width, f"w{index}")
        self.sink.level_started(plan.label, plan.num_prompts, plan.duration)
        convos = WORKLOADS[self.s.workload](self.spec, random.Random(self.s.seed))
        _gc_pause()
        try:
            t0 = time.perf_counter()
            deadline = t0 + plan.duration if plan.duration else None
            st = _LevelState(t0, plan.num_prompts, deadline, record=True)
            if plan.mode == "concurrency":
                await self._workers(st, convos, int(plan.value or 1), str(index))
            else:
                await self._arrivals(st, convos, plan, str(index))
            duration = time.perf_counter() - t0
            await self.parser.drain()
        finally:
            _gc_resume()
        st.records.sort(key=lambda r: r.index)
        result = LevelResult(
            mode="concurrency" if plan.mode == "concurrency" else "rate",
            value=plan.value,
            label=plan.label,
            burstiness=self.s.burstiness if plan.mode == "rate" else None,
            max_concurrency=plan.max_concurrency,
            warmup_requests=self.s.warmup,
            clock_origin_s=t0,
            metrics=level_metrics(st.records, duration, self.slo or None),
            requests=st.records,
        )
        self.sink.level_finished(result)
        return result

    async def _open_connections(self, width: int) -> None:
        """Open up to ``width`` keep-alive connections (cheap GETs) so that connection setup is warm-up."""
        assert self.http is not None
        http, url = self.http, self.s.url + "/v1/models"

        async def one() -> None:
            try:
                async with http.get(url, headers=self.headers, timeout=aiohttp.ClientTimeout(total=10)) as r:
                    await r.read()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass

        await asyncio.gather(*(one() for _ in range(width)))

    async def _workers(self, st: _LevelState, convos: Iterator[Conversation], width: int, tag: str) -> None:
        async def worker() -> None:
            while st.may_issue():
                await self._conversation(st, next(convos), tag)

        await asyncio.gather(*(worker() for _ in range(width)))

    async def _arrivals(
        self, st: _LevelState, convos: Iterator[Conversation], plan: LevelPlan, tag: str
    ) -> None:
        rng = random.Random(self.s.seed + 7)
        if plan.num_prompts is not None:
            n_sessions = math.ceil(plan.num_prompts / max(1, self.spec.turns))
            offsets: Iterator[float] = iter(arrival_offsets(n_sessions, plan.value, self.s.burstiness, rng))
        else:
            offsets = endless_offsets(plan.value, self.s.burstiness, rng)
        sem = asyncio.Semaphore(plan.max_concurrency) if plan.max_concurrency else None
        tasks: set[asyncio.Task[None]] = set()

        async def arrival(convo: Conversation) -> None:
            if sem is None:
                await self._conversation(st, convo, tag)
                return
            async with sem:
                await self._conversation(st, convo, tag)

        for offset in offsets:
            delay = st.t0 + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if not st.may_issue():
                break
            task = asyncio.create_task(arrival(next(convos)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)

    async def _conversation(self, st: _LevelState, convo: Conversation, tag: str) -> None:
        assert self.http is not None
        session = st.sessions
        st.sessions += 1
        replies: list[str] = []
        n_turns = 1 if convo.messages is not None else len(convo.turns)
        for turn in range(n_turns):
            if not st.may_issue():
                return
            index = st.issued
            st.issued += 1
            # A UUID: llama-cpp-python's server (asgi-correlation-id) rejects any other X-Request-Id.
            call = self.make_call(convo, turn, replies, str(uuid.uuid4()))
            http = self.fresh if self.stale_keepalive and self.fresh is not None else self.http
            outcome = await send(http, call, self.s.timeout, fresh=self.fresh)
            if outcome.resent:
                self.stale_keepalive = True
                self.resent += 1
            parsed = self.parser.submit(st, call, outcome, index, session, turn)
            if turn + 1 < n_turns:  # the next turn needs this reply
                rec, text = await parsed
                if not rec.ok:
                    return  # a conversation does not go on after a failed turn
                replies.append(text)

    def make_call(self, convo: Conversation, turn: int, replies: list[str], request_id: str) -> Call:
        """The HTTP request for one turn of a conversation."""
        messages = build_messages(convo, turn, replies)
        out_len = convo.output_lens[min(turn, len(convo.output_lens) - 1)]
        body: dict[str, Any] = {"model": self.model}
        if self.s.endpoint == "chat":
            body["messages"] = messages
            body["max_completion_tokens"] = out_len
        else:
            body["prompt"] = messages_to_prompt(messages)
        body["max_tokens"] = out_len
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        if self.s.ignore_eos:
            body["ignore_eos"] = True
            body["min_tokens"] = out_len
        body.update(self.extra)
        estimate = estimate_tokens(messages_to_prompt(messages))
        headers = {**self.headers, "X-Request-Id": request_id}
        return Call(self.api_url, json.dumps(body).encode(), headers, request_id, estimate)
