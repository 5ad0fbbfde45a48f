"""Decoding streams: token chunks, usage, how a stream ended, and errors."""

from __future__ import annotations

import json

from haloserve.bench.client import Call, Outcome, _restamp, http_error_message, parse_stream, to_record
from haloserve.testing.upstream import _Chunks


def chat_stream(n: int, usage: bool = True, done: bool = True) -> list[bytes]:
    c = _Chunks(True, "m", usage)
    events = [c.role() + c.token(0)] + [c.token(i) for i in range(1, n)]
    events[-1] += (
        c.finish("length") + (c.usage(7, n) if usage else b"") + (b"data: [DONE]\n\n" if done else b"")
    )
    return events


def test_role_and_finish_chunks_are_not_tokens() -> None:
    reads = [(float(i), data) for i, data in enumerate(chat_stream(4))]
    p = parse_stream(reads)
    assert p.token_times == [0.0, 1.0, 2.0, 3.0]
    assert "".join(p.text) == " lorem ipsum dolor sit"
    assert (p.completion_tokens, p.prompt_tokens, p.done, p.finished, p.broken) == (4, 7, True, True, None)


def test_events_split_at_any_byte_boundary() -> None:
    blob = b"".join(chat_stream(5))
    for cut in (1, 7, 50, 333):
        reads = [(float(i), blob[i : i + cut]) for i in range(0, len(blob), cut)]
        p = parse_stream(reads)
        assert len(p.token_times) == 5 and p.done and p.completion_tokens == 5


def test_crlf_comments_and_completions_text() -> None:
    c = _Chunks(False, "m", False)
    blob = b": ping\r\n\r\n" + (c.token(0) + c.token(1) + c.finish("stop")).replace(b"\n", b"\r\n")
    p = parse_stream([(1.0, blob)])
    assert len(p.token_times) == 2 and p.finished and not p.done


def test_reasoning_and_tool_call_deltas_count_as_tokens() -> None:
    events = [
        {"choices": [{"delta": {"reasoning_content": "hmm"}}]},
        {"choices": [{"delta": {"tool_calls": [{"function": {"arguments": '{"a"'}}]}}]},
        {"choices": [{"delta": {"content": ""}, "finish_reason": "stop"}]},
    ]
    blob = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    p = parse_stream([(0.0, blob)])
    assert len(p.token_times) == 2 and p.finished


def test_broken_json_and_error_events() -> None:
    p = parse_stream([(0.0, b'data: {"choices": [\n\n')])
    assert p.broken and "malformed" in p.broken
    p = parse_stream([(0.0, b'data: {"error": {"message": "out of memory"}}\n\n')])
    assert p.broken == "error event: out of memory"


def call() -> Call:
    return Call("http://x/v1/chat/completions", b"{}", {}, "rid", 12)


def test_record_from_complete_stream_uses_usage() -> None:
    reads = [(10.0 + 0.1 + 0.02 * i, data) for i, data in enumerate(chat_stream(3))]
    rec, text = to_record(call(), Outcome(called=9.99, start=10.0, status=200, reads=reads), 4, 9.0, 1, 2)
    assert rec.ok and text == " lorem ipsum dolor"
    assert abs(rec.ttft_s - 0.1) < 1e-9 and abs(rec.e2el_s - 0.14) < 1e-9 and len(rec.itl_s) == 2
    assert (rec.output_tokens, rec.output_tokens_source, rec.prompt_tokens, rec.prompt_tokens_source) == (
        3,
        "usage",
        7,
        "usage",
    )
    assert abs(rec.start_s - 1.0) < 1e-9 and abs(rec.client_overhead_s - 0.01) < 1e-9
    assert (rec.index, rec.session, rec.turn) == (4, 1, 2)


def test_record_without_usage_counts_chunks_and_estimates_prompt() -> None:
    reads = [(1.0 + i, d) for i, d in enumerate(chat_stream(3, usage=False))]
    rec, _ = to_record(call(), Outcome(called=0.0, start=0.0, status=200, reads=reads), 0, 0.0, 0, 0)
    assert rec.ok and rec.output_tokens == 3 and rec.output_tokens_source == "chunks"
    assert rec.prompt_tokens == 12 and rec.prompt_tokens_source == "estimate"


def test_failure_kinds_from_outcomes() -> None:
    early = to_record(
        call(),
        Outcome(called=0, start=0, status=200, reads=[(1.0, d) for d in chat_stream(3, done=False)[:2]]),
        0,
        0,
        0,
        0,
    )[0]
    assert early.error_kind == "early_close"
    empty = to_record(
        call(), Outcome(called=0, start=0, status=200, reads=[(1.0, b"data: [DONE]\n\n")]), 0, 0, 0, 0
    )[0]
    assert empty.error_kind == "broken_stream" and "no token" in (empty.error or "")
    body = json.dumps({"error": {"message": "invalid   API key", "type": "x"}}).encode()
    http = to_record(
        call(), Outcome(called=0, start=0, status=401, error_kind="http", body=body), 0, 0, 0, 0
    )[0]
    assert (http.error_kind, http.status, http.error) == ("http", 401, "HTTP 401: invalid API key")


def test_http_error_message_shapes() -> None:
    assert http_error_message(404, b'{"detail": "Not Found"}') == "HTTP 404: Not Found"
    assert http_error_message(502, b"bad gateway\n") == "HTTP 502: bad gateway"
    assert http_error_message(500, b"") == "HTTP 500"


def test_restamp_cuts_body_at_arrival_offsets() -> None:
    reads = [(5.0, b"aaabb"), (6.0, b"cc")]
    assert _restamp(reads, [(1.0, 3), (2.0, 5), (3.0, 5)]) == [(1.0, b"aaa"), (2.0, b"bb"), (6.0, b"cc")]


def test_parsing_hands_the_loop_back_every_few_events() -> None:
    from haloserve.bench.client import Parsed, parse_steps

    reads = [(float(i), data) for i, data in enumerate(chat_stream(20))]
    out = Parsed()
    pauses = sum(1 for _ in parse_steps(reads, out, every=8))
    # 20 token events + role, finish, usage and [DONE] share the 20 reads: 24 events,
    # a pause after the 8th, 16th and 24th
    assert pauses == 3
    assert out.token_times == [float(i) for i in range(20)] and out.done
    assert parse_stream(reads) == out  # the same result as parsing in one go
