"""The scheduler on the fake backend: admission, slots, prefix reuse, chunked prefill, stops, faults.

Every test drives :meth:`Scheduler.step` by hand (no thread, no sleep), and after every step checks that
the scheduler's idea of each KV cache is the cache and that no sampler outlives its request.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haloserve.engine.base import GenerationRequest, Output, SamplingParams
from haloserve.engine.bridge import RequestStream
from haloserve.engine.fake_backend import EOS, TOOL, FakeBackend, FakeBackendError
from haloserve.engine.scheduler import Job, Scheduler

# Streams need a loop to exist, never to run: the harness reads outputs straight from each step.
_LOOP = asyncio.new_event_loop()
_IDS = itertools.count()


class Harness:
    """A scheduler, its fake backend and the outputs of every request so far."""

    def __init__(
        self, backend: FakeBackend | None = None, *, parallel: int = 2, kv_unified: bool = False
    ) -> None:
        self.be = backend or FakeBackend(parallel=parallel, kv_unified=kv_unified)
        self.sched = Scheduler(self.be, parallel=self.be.info.n_parallel, kv_unified=self.be.kv_unified)
        self.outs: dict[RequestStream, list[Output]] = {}
        self.submitted = 0

    def submit(
        self,
        prompt: str | Sequence[int],
        max_tokens: int = 64,
        *,
        stop: Sequence[str] = (),
        logprobs: int | None = None,
        constraint: Any = None,
        preserved: frozenset[int] = frozenset(),
        **sampling: Any,
    ) -> RequestStream:
        """Queue a greedy request for ``prompt`` (text is tokenised without BOS)."""
        tokens = self.be.tokenize(prompt, add_special=False) if isinstance(prompt, str) else list(prompt)
        req = GenerationRequest(
            request_id=f"r{next(_IDS)}",
            prompt_tokens=tokens,
            max_tokens=max_tokens,
            sampling=SamplingParams(**{"temperature": 0.0, **sampling}),
            stop=stop,
            constraint=constraint,
            logprobs=logprobs,
            preserved_tokens=preserved,
        )
        stream = RequestStream(_LOOP, lambda s: None)
        job = Job(req, stream)
        stream.job = job
        self.outs[stream] = []
        self.sched.submit(job)
        self.submitted += 1
        return stream

    def step(self) -> list[tuple[RequestStream, Output]]:
        """One scheduler step; its outputs are recorded and returned."""
        out = self.sched.step()
        for stream, o in out:
            assert not self.finished(stream), "an output after the final one"
            self.outs[stream].append(o)
        self.check()
        return out

    def run(self, limit: int = 2000) -> int:
        """Step until nothing runs or waits; returns the number of steps."""
        for n in range(limit):
            if self.sched.idle:
                return n
            self.step()
        raise AssertionError(f"still busy after {limit} steps")

    def check(self) -> None:
        """Invariants after every step: the scheduler's view of each cache is the cache."""
        for slot in self.sched.slots:
            assert slot.tokens == self.be.kv[slot.seq], f"slot {slot.seq} believes it holds other tokens"
        assert self.be.live_samplers == len(self.sched.active), "a sampler outlived its request"
        assert all(j.slot is not None and j.slot.job is j for j in self.sched.active)

    def finished(self, stream: RequestStream) -> bool:
        """True once ``stream`` got its final output."""
        got = self.outs[stream]
        return bool(got) and got[-1].finish_reason is not None

    def text(self, stream: RequestStream) -> str:
        """All text ``stream`` received."""
        return "".join(o.text for o in self.outs[stream])

    def final(self, stream: RequestStream) -> Output:
        """The last output of a finished stream."""
        assert self.finished(stream), f"not finished: {self.outs[stream]}"
        return self.outs[stream][-1]

    def spans_of(self, seq: int) -> Iterator[tuple[int, int, int]]:
        """(step, position, token count) of every span of ``seq`` decoded so far."""
        for i, spans in enumerate(self.be.decodes):
            for s in spans:
                if s.seq == seq:
                    yield i, s.pos, len(s.tokens)


def test_greedy_follows_the_script_and_stops_at_end_of_generation() -> None:
    h = Harness()
    s = h.submit("x")
    steps = h.run()
    assert h.text(s) == "yz" and [o.text for o in h.outs[s]] == ["y", "z", ""]
    final = h.final(s)
    assert final.finish_reason == "stop" and final.token_ids == [EOS]
    assert (final.prompt_tokens, final.completion_tokens, final.cached_tokens) == (1, 3, 0)
    assert steps == 3 and h.be.text(0) == "xyz"  # EOS is sampled, never decoded
    assert h.sched.stats.requests_finished == 1 and h.sched.stats.generated_tokens == 3


def test_max_tokens_ends_with_length() -> None:
    h = Harness()
    s = h.submit("a", max_tokens=3)
    h.run()
    assert h.text(s) == "bcd" and h.final(s).finish_reason == "length"
    assert h.final(s).completion_tokens == 3


def test_a_full_slot_ends_with_length_before_the_cache_overflows() -> None:
    h = Harness(FakeBackend(parallel=1, n_ctx=8))
    s = h.submit("ab", max_tokens=100)
    h.run()
    assert h.text(s) == "cdefgh" and h.final(s).finish_reason == "length"
    assert len(h.be.kv[0]) == 7  # never more than n_ctx_slot (8) tokens


def test_stop_string_across_tokens_is_cut_and_never_sent() -> None:
    h = Harness()
    s = h.submit("a", stop=["de"])
    h.run()
    assert h.text(s) == "bc" and h.final(s).finish_reason == "stop"
    assert all("d" not in o.text for o in h.outs[s])


def test_text_held_for_a_stop_string_that_does_not_complete_is_released() -> None:
    h = Harness()
    s = h.submit("a", stop=["dX"])
    h.run()
    assert h.text(s) == "bcdefghijklmnopqrstuvwxyz" and h.final(s).finish_reason == "stop"
    texts = [o.text for o in h.outs[s]]
    assert "de" in texts and "d" not in texts  # "d" was held (no event) one step, then sent with "e"


def test_ignore_eos_bans_end_of_generation() -> None:
    h = Harness()
    s = h.submit("x", max_tokens=5, ignore_eos=True)
    h.run()
    assert h.text(s) == "yz ab" and h.final(s).finish_reason == "length"


def test_min_tokens_bans_end_of_generation_until_reached() -> None:
    h = Harness()
    s = h.submit("x", max_tokens=100, min_tokens=4)
    h.run()
    assert h.text(s) == "yz " + "abcdefghijklmnopqrstuvwxyz" and h.final(s).finish_reason == "stop"


def test_logit_bias_reaches_the_sampler() -> None:
    h = Harness()
    s = h.submit("a", max_tokens=6, logit_bias={ord("b"): -100.0})
    h.run()
    assert h.text(s) == " a a a"


def test_utf8_split_across_tokens_is_sent_whole() -> None:
    reply = list("é€!".encode())

    def model(history: list[int]) -> int:
        k = len(history) - 1  # the prompt is one token
        return reply[k] if k < len(reply) else EOS

    h = Harness(FakeBackend(model=model))
    s = h.submit("q")
    h.run()
    assert h.text(s) == "é€!" and all("\ufffd" not in o.text for o in h.outs[s])
    assert len(h.outs[s]) < len(reply) + 1  # partial characters produced no event


@pytest.mark.parametrize(("preserved", "text"), [(frozenset(), ""), (frozenset({TOOL}), "<tool>")])
def test_control_tokens_show_only_when_preserved(preserved: frozenset[int], text: str) -> None:
    h = Harness(FakeBackend(model=lambda hist: TOOL if hist[-1] != TOOL else EOS))
    s = h.submit("q", preserved=preserved)
    h.run()
    assert h.text(s) == text and h.final(s).completion_tokens == 2


def test_logprobs_of_the_sampled_token_and_the_alternatives() -> None:
    h = Harness()
    s = h.submit("x", logprobs=2)
    h.run()
    first = h.outs[s][0].logprobs
    assert first is not None and len(first) == 1
    lp = first[0]
    norm = np.log(np.exp(10.0) + np.exp(5.0) + (h.be.info.n_vocab - 2))
    assert lp.token == ord("y") and lp.piece == b"y" and lp.logprob == pytest.approx(10.0 - norm, abs=1e-4)
    assert [(t, p) for t, p, _ in lp.top] == [(ord("y"), b"y"), (ord(" "), b" ")]
    assert lp.top[1][2] == pytest.approx(5.0 - norm, abs=1e-4)
    last = h.final(s).logprobs
    assert last is not None and last[0].token == EOS and last[0].piece == b""  # EOS shows as no text


class Digits:
    """A grammar that allows ``n`` digits, accepting only those in ``ok``."""

    param = "response_format"

    def __init__(self, n: int, ok: str = "0123456789") -> None:
        self.n, self.ok = n, {ord(c) for c in ok}
        self.masks = self.accepted = 0
        self.error = ""

    def compute_mask(self) -> None:
        self.masks += 1

    def apply(self, logits: np.ndarray) -> None:
        keep = logits[ord("0") : ord("9") + 1].copy()
        logits[:] = -np.inf
        logits[ord("0") : ord("9") + 1] = keep
        logits[ord("7")] = 1.0  # the grammar's favourite, so the choice is visible

    def accept(self, token: int) -> bool:
        if token not in self.ok:
            self.error = f"response_format: {chr(token)!r} is not allowed"
            return False
        self.accepted += 1
        return True

    @property
    def done(self) -> bool:
        return self.accepted >= self.n


def test_a_constraint_masks_the_row_that_is_sampled_and_ends_when_done() -> None:
    h = Harness()
    c = Digits(3)
    s = h.submit("x", constraint=c)
    h.run()
    assert h.text(s) == "777" and h.final(s).finish_reason == "stop"
    assert c.masks == 3  # one mask per step, computed before sampling


def test_a_constraint_that_fails_ends_the_request_with_its_param() -> None:
    h = Harness()
    s = h.submit("x", constraint=Digits(3, ok="0123"))
    other = h.submit("x")
    h.run()
    final = h.final(s)
    assert final.finish_reason == "error" and final.error_param == "response_format"
    assert final.error == "response_format: '7' is not allowed" and final.text == ""
    assert h.text(other) == "yz"  # the other sequence of the same steps is unaffected


def test_an_identical_prompt_reuses_the_cache_but_recomputes_its_last_token() -> None:
    h = Harness(parallel=1)
    prompt = "the same prompt!"
    first = h.submit(prompt, max_tokens=2)
    h.run()
    n0 = len(h.be.decodes)
    second = h.submit(prompt, max_tokens=2)
    h.run()
    assert h.final(second).cached_tokens == len(prompt) - 1
    assert h.be.decodes[n0][0].pos == len(prompt) - 1 and len(h.be.decodes[n0][0].tokens) == 1
    assert h.text(first) == h.text(second) == "ab"
    assert h.sched.stats.prompt_tokens_cached == len(prompt) - 1


def test_a_continued_conversation_reuses_prompt_and_reply() -> None:
    h = Harness(parallel=3)
    a = h.submit("hello u", max_tokens=3)  # -> "vwx"
    h.run()
    b = h.submit("hello uvwx, and then?", max_tokens=2)
    h.run()
    assert h.text(a) == "vwx"
    assert h.final(b).cached_tokens == len("hello uvw")  # the last reply token never entered the cache
    seq_a = next(seq for seq, kv in enumerate(h.be.kv) if h.be.text(seq).startswith("hello uvwx, and then?"))
    assert [pos for _, pos, _ in h.spans_of(seq_a)][:4] == [0, 7, 8, 9]  # b prefilled from position 9 only


def test_an_unrelated_prompt_takes_an_empty_slot_then_the_least_recently_used() -> None:
    h = Harness(parallel=2)
    for p in ("first one", "second one"):
        h.submit(p, max_tokens=1)
        h.run()
    assert sorted(h.be.text(i)[:3] for i in range(2)) == ["fir", "sec"]  # both slots filled
    h.submit("THIRD", max_tokens=1)
    h.run()
    texts = sorted(h.be.text(i) for i in range(2))
    assert texts[0].startswith("THIRD") and texts[1].startswith("second")  # "first" was the LRU cache


def test_least_recently_used_counts_from_when_a_request_ended() -> None:
    h = Harness(parallel=2)
    long_ = h.submit("long one", max_tokens=6)  # admitted first, ends last
    short = h.submit("short one", max_tokens=1)
    h.run()
    assert h.final(short).finish_reason == h.final(long_).finish_reason == "length"
    h.submit("THIRD", max_tokens=1)
    h.run()
    texts = sorted(h.be.text(i) for i in range(2))
    assert texts[0].startswith("THIRD") and texts[1].startswith("long one")


def test_requests_wait_for_a_free_slot_in_arrival_order() -> None:
    h = Harness(parallel=1)
    a, b, c = h.submit("a", max_tokens=3), h.submit("x"), h.submit("w")
    h.step()
    assert [j.stream for j in h.sched.waiting] == [b, c] and not b.admitted and a.admitted
    while not h.finished(a):
        h.step()
        assert not h.outs[b]
    h.run()
    assert (h.text(a), h.text(b), h.text(c)) == ("bcd", "yz", "xyz")
    assert h.sched.n_taken == 3


def test_decoding_sequences_share_one_batch_in_sequence_order() -> None:
    h = Harness(parallel=3)
    streams = [h.submit(p, max_tokens=4) for p in ("a", "h", "p")]
    h.run()
    assert [h.text(s) for s in streams] == ["bcde", "ijkl", "qrst"]
    # step 0 prefills all three; steps 1..3 decode one token of each in one batch
    assert len(h.be.decodes) == 4
    assert all([sp.seq for sp in batch] == [0, 1, 2] for batch in h.be.decodes[1:])
    assert h.sched.stats.decode_steps_multi == 3 and h.sched.stats.max_seqs_in_step == 3


def test_a_long_prompt_alone_is_prefilled_in_whole_batches() -> None:
    h = Harness(FakeBackend(parallel=1, n_ctx=512, n_batch=64, n_ubatch=16))
    s = h.submit("!" * 150, max_tokens=1)
    h.run()
    assert [n for _, _, n in h.spans_of(0)] == [64, 64, 22]
    assert [p for _, p, _ in h.spans_of(0)] == [0, 64, 128]
    assert h.text(s) == "a" and h.sched.stats.prompt_tokens_processed == 150


def test_prefill_next_to_decoding_sequences_is_limited_to_one_micro_batch() -> None:
    h = Harness(FakeBackend(parallel=2, n_ctx=512, n_batch=64, n_ubatch=32))
    runner = h.submit("a", max_tokens=50, ignore_eos=True)
    h.step()
    assert runner.admitted and h.outs[runner]
    late = h.submit("!" * 70, max_tokens=1)
    while not h.finished(late):
        h.step()
    chunks = [n for _, _, n in h.spans_of(1)]
    assert chunks == [31, 31, 8]  # 32 tokens per step including the running sequence's one
    assert all(len(h.be.decodes[i]) == 2 for i, _, _ in h.spans_of(1))
    assert len(h.outs[runner]) == 1 + len(chunks)  # the runner got a token every step meanwhile


def test_cancelling_a_running_request_frees_its_slot_and_keeps_its_cache() -> None:
    h = Harness(parallel=1)
    s = h.submit("a", max_tokens=20)
    h.step()
    h.step()
    s.cancel()
    queued = h.submit("abc", max_tokens=1)
    h.step()
    assert h.outs[s][-1].finish_reason is None and len(h.outs[s]) == 2  # nothing more, no final
    h.run()
    assert h.text(queued) == "d" and h.final(queued).cached_tokens == 2  # reused "ab" of the cancelled one


def test_cancelling_a_waiting_request_drops_it_unseen() -> None:
    h = Harness(parallel=1)
    a = h.submit("a", max_tokens=2)
    b = h.submit("b", max_tokens=2)
    h.step()
    b.cancel()
    h.run()
    assert not b.admitted and h.outs[b] == [] and h.text(a) == "bc"
    assert h.sched.n_taken == 2


def test_a_failed_decode_fails_the_requests_of_that_step_and_clears_their_caches() -> None:
    h = Harness(parallel=2)
    a, b = h.submit("a", max_tokens=5), h.submit("p", max_tokens=5)
    h.step()
    h.be.decode_faults = [-3]
    h.step()
    for s in (a, b):
        assert h.final(s).finish_reason == "error" and h.final(s).error == "llama_decode failed with code -3"
    assert h.be.kv == [[], []] and h.sched.stats.requests_failed == 2
    c = h.submit("x")
    h.run()
    assert h.text(c) == "yz"  # the engine goes on


def test_a_sampling_failure_fails_only_its_request() -> None:
    h = Harness(parallel=2)
    h.be.sample_faults = {ord("d")}
    bad, good = h.submit("a"), h.submit("w")
    h.run()
    assert h.text(bad) == "bc" and h.final(bad).finish_reason == "error"
    assert h.final(bad).error == "engine error: injected sampling fault at token 100"
    assert h.text(good) == "xyz" and h.final(good).finish_reason == "stop"
    assert h.sched.stats.requests_failed == 1


def test_a_prompt_longer_than_the_slot_fails_when_the_cache_is_full() -> None:
    h = Harness(FakeBackend(parallel=1, n_ctx=100, n_batch=64))
    s = h.submit("!" * 120)
    h.run()
    assert h.final(s).error == "llama_decode failed with code 1" and h.be.kv == [[]]


def test_fail_all_ends_running_and_waiting_requests_but_not_cancelled_ones() -> None:
    h = Harness(parallel=1)
    a, b, c = h.submit("a"), h.submit("b"), h.submit("c")
    h.step()
    c.cancel()
    out = h.sched.fail_all("the server is shutting down")
    assert [(s, o.finish_reason, o.error) for s, o in out] == [
        (a, "error", "the server is shutting down"),
        (b, "error", "the server is shutting down"),
    ]
    assert h.sched.idle and h.sched.n_taken == 3 and h.be.live_samplers == 0
    assert all(sl.free for sl in h.sched.slots)


def test_the_fake_backend_refuses_what_llama_cpp_refuses() -> None:
    be = FakeBackend(parallel=1, n_batch=8)
    from haloserve.engine.backend import Span

    with pytest.raises(FakeBackendError):
        be.decode([Span(list(range(9)), 0, 0, True)])  # over n_batch
    assert be.decode([Span([1, 2], 0, 0, True)]) == 0
    with pytest.raises(FakeBackendError):
        be.decode([Span([3], 5, 0, True)])  # a gap after position 1
    with pytest.raises(FakeBackendError):
        be.logits(0)  # no logits were asked for at index 0
    with pytest.raises(FakeBackendError):
        be.seq_rm(0, 0, 1)  # a hole


def _alone(prompt: str, max_tokens: int) -> str:
    h = Harness(parallel=1)
    s = h.submit(prompt, max_tokens=max_tokens)
    h.run()
    return h.text(s)


PROMPTS = ["a", "w", "hello", "!!", "hello w", "zz"]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(PROMPTS), st.integers(1, 12), st.integers(0, 3), st.booleans()),
        min_size=1,
        max_size=8,
    ),
    st.integers(1, 3),
    st.booleans(),
)
def test_any_interleaving_gives_each_request_what_it_gets_alone(
    plan: list[tuple[str, int, int, bool]], parallel: int, unified: bool
) -> None:
    """Requests arriving at random steps, some cancelled: the others' text is what they produce alone."""
    h = Harness(
        FakeBackend(parallel=parallel, n_ctx=256 * parallel, n_batch=8, n_ubatch=4, kv_unified=unified)
    )
    streams = []
    for prompt, max_tokens, wait, cancel in plan:
        s = h.submit(prompt, max_tokens=max_tokens)
        streams.append((s, prompt, max_tokens, cancel))
        for _ in range(wait):
            h.step()
        if cancel:
            s.cancel()
    h.run()
    for s, prompt, max_tokens, cancel in streams:
        if cancel:
            assert not h.finished(s) or h.final(s).finish_reason in ("stop", "length")
        else:
            assert h.final(s).finish_reason in ("stop", "length")
            assert h.text(s) == _alone(prompt, max_tokens)
    assert h.sched.n_taken == len(plan) and h.be.live_samplers == 0
