"""Incremental detokenisation never splits a character; stop strings are cut across pieces."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from haloserve.engine.textstream import TextStream


def feed(ts: TextStream, pieces: list[bytes]) -> list[str]:
    out = [ts.push(p) for p in pieces]
    out.append(ts.flush())
    return out


def test_multibyte_characters_split_across_pieces() -> None:
    raw = "héllo 🌍 世界".encode()
    pieces = [raw[i : i + 1] for i in range(len(raw))]  # one byte per piece: worst case
    out = feed(TextStream(), pieces)
    assert "".join(out) == "héllo 🌍 世界"
    assert all("\ufffd" not in part for part in out)


@pytest.mark.model
def test_real_tokenizer_pieces_round_trip(model_path: Path) -> None:
    from haloserve.engine.llamacpp import LlamaModel

    model = LlamaModel(model_path)
    try:
        text = "Zürich → 東京 🚀 naïve café"
        pieces = [model.piece(t) for t in model.tokenize(text, add_special=False)]
        assert any(len(p) and p.decode("utf-8", "ignore").encode() != p for p in pieces), "want split chars"
        out = feed(TextStream(), pieces)
        assert "".join(out) == text and all("\ufffd" not in o for o in out)
    finally:
        model.close()


def test_stop_string_spanning_pieces_is_never_emitted() -> None:
    ts = TextStream(["STOP"])
    out = feed(ts, [b"hello S", b"T", b"O", b"P and more"])
    assert "".join(out) == "hello " and ts.stopped
    assert out[1] == "" and out[2] == ""  # "ST", "STO" are held back until they resolve


def test_held_text_is_released_when_it_stops_matching() -> None:
    ts = TextStream(["STOP"])
    assert ts.push(b"ST") == ""
    assert ts.push(b"AR") == "STAR"
    assert ts.flush() == ""


def test_earliest_of_several_stops_wins_and_partial_suffix_flushes() -> None:
    ts = TextStream(["world", "lo w"])
    assert "".join(feed(ts, [b"hel", b"lo wor", b"ld"])) == "hel"
    ts = TextStream(["</end>"])
    assert "".join(feed(ts, [b"a </e"])) == "a </e"  # generation ended: the partial match is text


def test_invalid_utf8_becomes_replacement_not_an_exception() -> None:
    assert "".join(feed(TextStream(), [b"ok\xff", b"\xfe"])) == "ok\ufffd\ufffd"


@given(
    st.text(max_size=40),
    st.lists(st.integers(1, 5), min_size=1, max_size=20),
    st.text(min_size=1, max_size=4),
)
def test_any_split_gives_text_up_to_first_stop(text: str, cuts: list[int], stop: str) -> None:
    raw = text.encode()
    pieces, i, k = [], 0, 0
    while i < len(raw):
        pieces.append(raw[i : i + cuts[k % len(cuts)]])
        i += cuts[k % len(cuts)]
        k += 1
    out = "".join(feed(TextStream([stop]), pieces))
    idx = text.find(stop)
    assert out == (text if idx < 0 else text[:idx])


@pytest.mark.parametrize("stops", [[], ["x"]])
def test_text_len_counts_released_characters(stops: list[str]) -> None:
    ts = TextStream(stops)
    out = "".join(feed(ts, [b"abc", b"def"]))
    assert ts.text_len == len(out)
