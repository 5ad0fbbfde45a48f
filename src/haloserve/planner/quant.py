"""ggml data types: block sizes, bytes per block, and bits per weight of whole-file quantisations.

Two different questions live here:

* **Exact storage of one tensor** (KV cache rows, GGUF tensors). ggml stores ``block_size`` values in
  ``type_size`` bytes (``ggml/src/ggml.c``, ``type_traits``); a row of ``n`` values takes
  ``n / block_size * type_size`` bytes and ``n`` must be a multiple of ``block_size``. These numbers are
  exact and are cross-checked against the ``gguf`` package's ``GGML_QUANT_SIZES`` in the tests.
* **Average bits per weight of a quantised model file** (``Q4_K_M`` ...), used only when the weights'
  exact size is unknown (a Hugging Face config or a catalog name). A "mix" such as ``Q4_K_M`` keeps some
  tensors at a higher type, so its average is above its base type. The figures below come from
  llama.cpp's ``tools/quantize/quantize.cpp`` table of file sizes for Llama-3-8B (8,030,261,248
  parameters; sizes in GiB), converted with ``bits = size_GiB * 2**30 * 8 / params``. Pure block types
  (``Q8_0``, ``Q4_0``, ``IQ4_XS``, ``MXFP4`` ...) use their exact block figure. Real files differ by a few
  percent (vocabulary share, per-model overrides): the planner labels such weights as an estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

from haloserve.errors import ConfigError


@dataclass(frozen=True)
class GGMLType:
    """One ggml storage type: ``block_size`` values are stored in ``type_size`` bytes."""

    name: str
    type_id: int
    block_size: int
    type_size: int

    @property
    def bytes_per_value(self) -> float:
        """Average bytes per stored value (``q8_0`` is 34/32 = 1.0625)."""
        return self.type_size / self.block_size

    @property
    def bits_per_weight(self) -> float:
        """Average bits per stored value (``q4_0`` is 4.5)."""
        return self.type_size * 8 / self.block_size

    def row_bytes(self, n: int) -> int:
        """Bytes of one row of ``n`` values, exactly as ``ggml_row_size``; ``n`` must fill whole blocks."""
        if n % self.block_size:
            raise ConfigError(
                f"{self.name} stores values in blocks of {self.block_size}; "
                f"a row of {n} values does not fill whole blocks"
            )
        return n // self.block_size * self.type_size


# ggml type ids (enum ggml_type in ggml.h) with (block size, bytes per block).
_TYPES: tuple[tuple[str, int, int, int], ...] = (
    ("f32", 0, 1, 4),
    ("f16", 1, 1, 2),
    ("q4_0", 2, 32, 18),
    ("q4_1", 3, 32, 20),
    ("q5_0", 6, 32, 22),
    ("q5_1", 7, 32, 24),
    ("q8_0", 8, 32, 34),
    ("q8_1", 9, 32, 40),
    ("q2_k", 10, 256, 84),
    ("q3_k", 11, 256, 110),
    ("q4_k", 12, 256, 144),
    ("q5_k", 13, 256, 176),
    ("q6_k", 14, 256, 210),
    ("q8_k", 15, 256, 292),
    ("iq2_xxs", 16, 256, 66),
    ("iq2_xs", 17, 256, 74),
    ("iq3_xxs", 18, 256, 98),
    ("iq1_s", 19, 256, 50),
    ("iq4_nl", 20, 32, 18),
    ("iq3_s", 21, 256, 110),
    ("iq2_s", 22, 256, 82),
    ("iq4_xs", 23, 256, 136),
    ("i8", 24, 1, 1),
    ("i16", 25, 1, 2),
    ("i32", 26, 1, 4),
    ("i64", 27, 1, 8),
    ("f64", 28, 1, 8),
    ("iq1_m", 29, 256, 56),
    ("bf16", 30, 1, 2),
    ("tq1_0", 34, 256, 54),
    ("tq2_0", 35, 256, 66),
    ("mxfp4", 39, 32, 17),
)

GGML_TYPES: dict[str, GGMLType] = {n: GGMLType(n, i, b, s) for n, i, b, s in _TYPES}
GGML_TYPES_BY_ID: dict[int, GGMLType] = {t.type_id: t for t in GGML_TYPES.values()}

# Cache types llama-server accepts for --cache-type-k / --cache-type-v (common/arg.cpp kv_cache_types).
KV_CACHE_TYPES: tuple[str, ...] = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")

# Best quality first: the order in which the planner tries cache types when looking for one that fits.
# bf16 and f32 are left out of the search (f16 is the same size as bf16 and the usual default).
KV_QUALITY_LADDER: tuple[str, ...] = ("f16", "q8_0", "q5_1", "q5_0", "q4_1", "iq4_nl", "q4_0")

# Whole-file quantisations: average bits per weight and where the figure comes from.
_LLAMA3_8B_PARAMS = 8_030_261_248


def _from_quantize_table(size_gib: float) -> float:
    return round(size_gib * 2**30 * 8 / _LLAMA3_8B_PARAMS, 2)


@dataclass(frozen=True)
class FileQuant:
    """A whole-model quantisation (``Q4_K_M``): average bits per weight and the figure's provenance.

    ``expert_bits_per_weight`` differs only for quantisations that treat routed experts apart, such as
    llama.cpp's ``MXFP4_MOE`` (experts MXFP4, every other tensor Q8_0: ``src/llama-quant.cpp``).
    """

    name: str
    bits_per_weight: float
    source: str
    expert_bits_per_weight: float | None = None

    @property
    def expert_bits(self) -> float:
        """Bits per weight of routed-expert tensors."""
        return self.bits_per_weight if self.expert_bits_per_weight is None else self.expert_bits_per_weight


_QUANTIZE_CPP = "llama.cpp tools/quantize/quantize.cpp: {size} GiB for Llama-3-8B"


def _mix(name: str, size_gib: float) -> FileQuant:
    return FileQuant(name, _from_quantize_table(size_gib), _QUANTIZE_CPP.format(size=size_gib))


def _block(name: str, ggml_name: str) -> FileQuant:
    t = GGML_TYPES[ggml_name]
    return FileQuant(name, t.bits_per_weight, f"ggml block: {t.type_size} bytes per {t.block_size} values")


FILE_QUANTS: dict[str, FileQuant] = {
    q.name: q
    for q in (
        _block("F32", "f32"),
        _block("F16", "f16"),
        _block("BF16", "bf16"),
        _block("Q8_0", "q8_0"),
        _mix("Q6_K", 6.14),
        _mix("Q5_K_M", 5.33),
        _mix("Q5_K_S", 5.21),
        _block("Q5_1", "q5_1"),
        _block("Q5_0", "q5_0"),
        _mix("Q4_K_M", 4.58),
        _mix("Q4_K_S", 4.37),
        _block("Q4_1", "q4_1"),
        _block("Q4_0", "q4_0"),
        _block("IQ4_NL", "iq4_nl"),
        _block("IQ4_XS", "iq4_xs"),
        FileQuant(
            "MXFP4_MOE",
            GGML_TYPES["q8_0"].bits_per_weight,
            "llama.cpp src/llama-quant.cpp: routed experts MXFP4 (17 bytes per 32), other tensors Q8_0",
            GGML_TYPES["mxfp4"].bits_per_weight,
        ),
        _mix("Q3_K_L", 4.03),
        _mix("Q3_K_M", 3.74),
        _mix("Q3_K_S", 3.41),
        _block("IQ3_S", "iq3_s"),
        _block("IQ3_XXS", "iq3_xxs"),
        _mix("Q2_K", 2.96),
        _block("IQ2_S", "iq2_s"),
        _block("IQ2_XS", "iq2_xs"),
        _block("IQ2_XXS", "iq2_xxs"),
        _block("IQ1_M", "iq1_m"),
        _block("IQ1_S", "iq1_s"),
    )
}

# llama_ftype (general.file_type in a GGUF) -> name, for display only (llama.h enum llama_ftype).
FILE_TYPE_NAMES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
}


def kv_type(name: str) -> GGMLType:
    """The ggml type of a KV cache type name as llama-server spells it; :class:`ConfigError` if unknown."""
    key = name.strip().lower()
    if key not in KV_CACHE_TYPES:
        raise ConfigError(f"unknown KV cache type {name!r}; choose one of {', '.join(KV_CACHE_TYPES)}")
    return GGML_TYPES[key]


def file_quant(name: str) -> FileQuant:
    """A whole-file quantisation by name (case-insensitive, ``q4_k_m`` or ``Q4_K_M``)."""
    key = name.strip().upper()
    if key == "MXFP4":
        key = "MXFP4_MOE"
    if key not in FILE_QUANTS:
        raise ConfigError(f"unknown quantisation {name!r}; choose one of {', '.join(FILE_QUANTS)}")
    return FILE_QUANTS[key]
