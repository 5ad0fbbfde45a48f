"""AMD GPU targets from KFD's ``gfx_target_version`` (``major*10000 + minor*100 + stepping``).

110501 is gfx1151 (Strix Halo); the table names the chips a Strix Halo owner is likely to meet, so that
doctor says "Strix Point (gfx1150)" instead of guessing. Values follow the kernel's ``kfd_device.c``:
e.g. GC 11.0.3 reports 110001 (gfx1101) and Phoenix reports 110003 (gfx1103).
"""

from __future__ import annotations

from dataclasses import dataclass

STRIX_HALO = "gfx1151"


@dataclass(frozen=True)
class GfxTarget:
    """A decoded target: LLVM name, the chip and products, and whether it is an integrated GPU."""

    version: int
    name: str
    chip: str
    integrated: bool

    @property
    def strix_halo(self) -> bool:
        """True for gfx1151, the Ryzen AI Max (Strix Halo) GPU."""
        return self.name == STRIX_HALO

    @property
    def label(self) -> str:
        """``gfx1151 (Strix Halo: Radeon 8060S / 8050S / 8040S, integrated)``."""
        where = "integrated" if self.integrated else "discrete"
        return f"{self.name} ({self.chip}, {where})" if self.chip else f"{self.name} ({where})"


# version -> (chip and products, integrated)
_KNOWN: dict[int, tuple[str, bool]] = {
    110501: ("Strix Halo: Radeon 8060S / 8050S / 8040S", True),
    110500: ("Strix Point: Radeon 890M / 880M", True),
    110502: ("Krackan Point: Radeon 860M / 840M", True),
    110503: ("RDNA 3.5 APU, Krackan family", True),
    110003: ("Phoenix / Hawk Point: Radeon 780M / 760M / 740M", True),
    110000: ("Navi 31: Radeon RX 7900 XTX / XT / GRE, PRO W7900 / W7800", False),
    110001: ("Navi 32: Radeon RX 7800 XT / 7700 XT, PRO W7700", False),
    110002: ("Navi 33: Radeon RX 7600 / 7600 XT, PRO W7600", False),
    120000: ("Navi 44: Radeon RX 9060 XT", False),
    120001: ("Navi 48: Radeon RX 9070 XT / 9070, AI PRO R9700", False),
    100300: ("Navi 21: Radeon RX 6800 / 6900 XT, PRO W6800", False),
    100301: ("Navi 22: Radeon RX 6700 XT", False),
    100302: ("Navi 23: Radeon RX 6600 / 6600 XT", False),
    100303: ("Van Gogh: Steam Deck", True),
    100304: ("Navi 24: Radeon RX 6500 XT / 6400", False),
    100305: ("Rembrandt: Radeon 680M / 660M", True),
    100306: ("Raphael / Granite Ridge: Radeon 610M", True),
    90000: ("Vega 10: Radeon RX Vega, Instinct MI25", False),
    90002: ("Raven Ridge / Picasso", True),
    90006: ("Vega 20: Radeon VII, Instinct MI50 / MI60", False),
    90008: ("Arcturus: Instinct MI100", False),
    90010: ("Aldebaran: Instinct MI210 / MI250 / MI250X", False),
    90012: ("Renoir / Cezanne / Lucienne", True),
    90400: ("Instinct MI300A", True),
    90401: ("Instinct MI300X (early)", False),
    90402: ("Instinct MI300X / MI325X", False),
    90500: ("Instinct MI350X / MI355X", False),
}

# Compute units of the Strix Halo GPUs whose marketing name is certain.
_STRIX_HALO_CUS = {40: "Radeon 8060S", 32: "Radeon 8050S"}


def gfx_name(version: int) -> str | None:
    """``110501`` -> ``gfx1151``; ``90010`` -> ``gfx90a``; ``None`` for values that are not targets."""
    if version <= 0 or version >= 1_000_000:
        return None
    major, minor, step = version // 10000, (version // 100) % 100, version % 100
    if major < 7 or minor > 15 or step > 15:
        return None
    return f"gfx{major}{minor:x}{step:x}"


def decode(version: int) -> GfxTarget | None:
    """The target for a ``gfx_target_version``; unknown but well-formed values get an empty chip name."""
    name = gfx_name(version)
    if name is None:
        return None
    chip, integrated = _KNOWN.get(version, ("", False))
    return GfxTarget(version=version, name=name, chip=chip, integrated=integrated)


def strix_halo_model(compute_units: int | None) -> str | None:
    """The Radeon name of a Strix Halo GPU from its compute units, when certain."""
    return _STRIX_HALO_CUS.get(compute_units or 0)


def override_for(name: str) -> str | None:
    """The ``HSA_OVERRIDE_GFX_VERSION`` spelling of a target: ``gfx1151`` -> ``11.5.1``."""
    if not name.startswith("gfx") or len(name) < 6:
        return None
    digits = name[3:]
    try:
        major = int(digits[:-2])
        minor, step = int(digits[-2], 16), int(digits[-1], 16)
    except ValueError:
        return None
    return f"{major}.{minor}.{step}"
