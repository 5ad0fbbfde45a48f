"""The SSE decoder handles any chunking, line-end style, comments and multi-line data."""

from __future__ import annotations

import json

from hypothesis import given
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
