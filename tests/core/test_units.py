"""TTM pages and size parsing (errata 1)."""

from __future__ import annotations

import pytest

from haloserve.units import (
    GB,
    GiB,
    MiB,
    fmt_bytes,
    parse_size,
    ttm_pages_for_gib,
    ttm_pages_to_bytes,
)


def test_ttm_pages_follow_4k_pages_not_the_seed_formula() -> None:
    assert ttm_pages_for_gib(120) == 31_457_280
    assert ttm_pages_for_gib(1) == 262_144
    # The seed's 30,720,000 pages are only ~117.2 GiB.
    assert round(ttm_pages_to_bytes(30_720_000) / GiB, 1) == 117.2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("64", 64 * GiB),
        ("64G", 64 * GiB),
        ("512MiB", 512 * MiB),
        ("0.5 GB", GB // 2),
        ("1t", 1024 * GiB),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "-1", "12 parsecs", "nan", "inf", "G"])
def test_parse_size_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


def test_fmt_bytes() -> None:
    assert fmt_bytes(3 * GiB) == "3.00 GiB"
    assert fmt_bytes(43.5 * GB, binary=False) == "43.50 GB"
    assert fmt_bytes(12) == "12 B"
