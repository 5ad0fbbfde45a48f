"""Memory units and the Strix Halo TTM arithmetic shared by plan, doctor and deploy.

A TTM page is 4 KiB, so ``pages = GiB x 262144`` (errata 1: the seed's ``GB x 1024 x 1024 / 4.096``
is wrong; 120 GiB is 31,457,280 pages).
"""

from __future__ import annotations

KiB = 1024
MiB = 1024**2
GiB = 1024**3
GB = 1000**3
TTM_PAGE_BYTES = 4 * KiB
PAGES_PER_GIB = GiB // TTM_PAGE_BYTES  # 262144


def ttm_pages_for_gib(gib: float) -> int:
    """TTM pages (4 KiB each) that make ``gib`` GiB: ``gib x 262144``."""
    return round(gib * PAGES_PER_GIB)


def ttm_pages_to_bytes(pages: int) -> int:
    """Bytes covered by ``pages`` TTM pages."""
    return pages * TTM_PAGE_BYTES


def parse_size(text: str, default_unit: str = "GiB") -> int:
    """Parse ``"64"``, ``"64G"``, ``"512MiB"``, ``"0.5 GB"`` into bytes (bare numbers use ``default_unit``).

    Binary suffixes (``K``, ``M``, ``G``, ``T``, ``KiB`` ...) are powers of 1024; ``KB``/``MB``/``GB``/``TB``
    are powers of 1000. Raises ``ValueError`` on anything else or a negative size.
    """
    units = {
        "": None,
        "b": 1,
        "k": KiB,
        "kib": KiB,
        "m": MiB,
        "mib": MiB,
        "g": GiB,
        "gib": GiB,
        "t": 1024 * GiB,
        "tib": 1024 * GiB,
        "kb": 1000,
        "mb": 1000**2,
        "gb": GB,
        "tb": 1000 * GB,
    }
    raw = text.strip().lower().replace(" ", "")
    i = len(raw)
    while i > 0 and raw[i - 1].isalpha():
        i -= 1
    number, unit = raw[:i], raw[i:]
    if unit not in units:
        raise ValueError(f"unknown size unit in {text!r}")
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a size: {text!r}") from None
    if value < 0 or value != value or value == float("inf"):
        raise ValueError(f"size must be a finite, non-negative number: {text!r}")
    factor = units[unit] or units[default_unit.lower()]
    assert factor is not None
    return round(value * factor)


def fmt_bytes(n: float, binary: bool = True) -> str:
    """Human size: ``fmt_bytes(3 * GiB) == "3.00 GiB"``; ``binary=False`` gives decimal GB."""
    steps = ["B", "KiB", "MiB", "GiB", "TiB"] if binary else ["B", "KB", "MB", "GB", "TB"]
    base = 1024.0 if binary else 1000.0
    value = float(n)
    for unit in steps:
        if abs(value) < base or unit == steps[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= base
    raise AssertionError("unreachable")
