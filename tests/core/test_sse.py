"""The SSE framer and decoder handle any chunking, any mix of line ends, comments, multi-line data and
a bound on event size."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haloserve.protocol import sse


def _decode_all(chunks: list[bytes]) -> list[sse.Event]:
    dec = sse.Decoder()
    out: list[sse.Event] = []
    for chunk in chunks:
        out.extend(dec.feed(chunk))
    out.extend(dec.close())
    return out


def test_round_trip_with_done() -> None:
    payload = sse.encode({"a": 1, "text": "héllo\nworld"}) + sse.DONE
    events = _decode_all([payload])
    assert [e.done for e in events] == [False, True]
    assert events[0].json() == {"a": 1, "text": "héllo\nworld"}


def test_crlf_cr_comments_event_and_multiline() -> None:
    raw = b': keep-alive\r\nevent: error\r\ndata: {"x":\r\ndata: 1}\r\n\r\ndata: last\rdata: more\r\r'
    events = _decode_all([raw])
    assert events[0].event == "error"
    assert json.loads(events[0].data) == {"x": 1}
    assert events[1].data == "last\nmore"


def test_final_event_without_blank_line_is_flushed() -> None:
    events = _decode_all([b"data: tail"])
    assert [e.data for e in events] == ["tail"]


@given(
    st.lists(st.dictionaries(st.text(max_size=5), st.text(max_size=20), max_size=3), max_size=6),
    st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=50),
    st.sampled_from([b"\n", b"\r\n", b"\r"]),
)
def test_any_chunking_and_line_end_gives_the_same_events(
    objs: list[dict[str, str]], cuts: list[int], eol: bytes
) -> None:
    raw = b"".join(sse.encode(o) for o in objs).replace(b"\n", eol)
    chunks, i, k = [], 0, 0
    while i < len(raw):
        step = cuts[k % len(cuts)]
        chunks.append(raw[i : i + step])
        i += step
        k += 1
    assert [e.json() for e in _decode_all(chunks)] == objs


def _spec_events(raw: bytes) -> list[str]:
    """An oracle read literally from the WHATWG rules: split into lines, dispatch on a blank line."""
    out: list[str] = []
    data: list[str] = []
    for line in re.split(r"\r\n|\n|\r", raw.decode())[:-1]:  # the last piece has no line end yet
        if line == "":
            if data:
                out.append("\n".join(data))
            data = []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            if name == "data":
                data.append(value[1:] if value.startswith(" ") else value)
    return out


_PIECES = [b"\r", b"\n", b"\r\n", b"data: x", b"data:y", b": note", b"event: e", b"z"]


@settings(max_examples=400)
@given(st.lists(st.sampled_from(_PIECES), max_size=24), st.lists(st.integers(0, 60), max_size=5))
@pytest.mark.slow
def test_framer_cuts_any_mix_of_line_ends_like_the_spec(pieces: list[bytes], cuts: list[int]) -> None:
    raw = b"".join(pieces)
    framer = sse.Framer(limit=None)
    forwarded: list[bytes] = []
    events: list[str] = []
    prev = 0
    for cut in [*sorted({min(c, len(raw)) for c in cuts}), len(raw)]:
        block = framer.cut(raw[prev:cut])
        prev = cut
        forwarded.append(block)
        events += [e.data for r in sse.split(block) if (e := sse.parse_event(r)) is not None]
    assert b"".join(forwarded) + framer.flush() == raw  # a proxy forwards every byte, in order
    assert events == _spec_events(raw)


def test_a_read_split_between_cr_and_lf() -> None:
    framer = sse.Framer()
    assert framer.cut(b"data: a\r") == b""
    assert framer.cut(b"\ndata: b\r\n\r") == b"data: a\r\ndata: b\r\n\r"  # the event ended at "\r\n\r"
    assert framer.cut(b"\ndata: c\r\n\r\n") == b"\ndata: c\r\n\r\n"
    dec = sse.Decoder()
    got = [e.data for part in (b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") for e in dec.feed(part)]
    assert got == ["a\nb"]


def test_each_separator_style_ends_an_event_at_once() -> None:
    for sep in (b"\n\n", b"\r\n\r\n", b"\r\r", b"\n\r\n", b"\r\n\n"):
        framer = sse.Framer()
        assert framer.cut(b"data: 1" + sep) == b"data: 1" + sep, sep
        assert framer.held == 0


def test_an_event_past_the_limit_is_refused_however_it_arrives() -> None:
    framer = sse.Framer(limit=1024)
    with pytest.raises(sse.EventTooLarge):
        for _ in range(30):
            framer.cut(b"data: " + b"x" * 60 + b"\r\n")  # lines, but never a blank one
    with pytest.raises(sse.EventTooLarge):
        sse.Framer(limit=1024).cut(b"data: " + b"x" * 2000 + b"\n\n")  # whole, in one read
    many = b"".join(b"data: %d\n\n" % i for i in range(500))  # a read past the limit of small events
    assert sse.Framer(limit=1024).cut(many) == many
    late = sse.Framer(limit=1024)  # the whole events before the long one still go out, then it fails
    assert late.cut(b"data: a\r\n\r\n" + b"data: " + b"z" * 2000) == b"data: a\r\n\r\n"
    with pytest.raises(sse.EventTooLarge):
        late.cut(b"\n\n")
    with pytest.raises(sse.EventTooLarge):
        late.flush()
    ok = sse.Framer(limit=1024)
    assert ok.cut(b"data: " + b"y" * 1000) == b"" and ok.cut(b"\n\n").endswith(b"y\n\n")


def test_usage_scanner_strips_the_injected_chunk_in_every_line_end_style() -> None:
    from haloserve.gateway.stream import UsageScanner

    for eol in (b"\n", b"\r\n", b"\r"):
        events = [
            sse.encode({"choices": [{"delta": {"content": "hi"}}], "usage": None}).replace(b"\n", eol),
            sse.encode({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}).replace(
                b"\n", eol
            ),
            sse.DONE.replace(b"\n", eol),
        ]
        raw = b"".join(events)
        want = [e.data for e in sse.Decoder().feed(events[0] + events[2])]
        for cut in range(1, len(raw)):
            sc = UsageScanner(strip=True)
            got = sc.feed(raw[:cut]) + sc.feed(raw[cut:]) + sc.flush()
            dec = sse.Decoder()
            assert [e.data for e in dec.feed(got) + dec.close()] == want, (eol, cut)
            assert b"prompt_tokens" not in got and (sc.prompt, sc.completion) == (7, 3)
