"""A bounded, streaming reader for the header of a GGUF file: metadata and tensor table, never the data.

The ``gguf`` package's ``GGUFReader`` memory-maps the file and decodes every tokenizer entry into its own
numpy array (5.5 s for the bundled 135M model's 49k-token vocabulary); planning needs none of those
strings, so this reader walks the header with ``struct`` and only counts long arrays.

The header is untrusted input. It is read in chunks from the start of the file, and every count or
length is checked against the caps below and against the bytes left in the file *before* anything of
that size is read or built. File size alone proves nothing (a sparse file of 2 TB holds no data), so the
caps bound memory and time on their own: at most :data:`MAX_HEADER_BYTES` are read, and nothing longer
than :data:`MAX_STRING` is decoded. Every fault is a :class:`DamagedGGUF` ("damaged GGUF: <what>
(<file>)"). Format constants (value types, default alignment) come from the ``gguf`` package; the tests
compare this reader with ``GGUFReader``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from gguf import GGUF_DEFAULT_ALIGNMENT, GGUFValueType

from haloserve.errors import ConfigError
from haloserve.planner.quant import GGML_TYPES_BY_ID
from haloserve.printable import printable

MAGIC = b"GGUF"
MAX_DECODED_ARRAY = 4096  # longer arrays (vocabularies, merges) are skipped; only their length is kept

# Caps on what a header may claim (docs/security.md, "GGUF headers"). Real models sit far below each:
# DeepSeek-V3/R1 (671B) has 1,025 tensors per file set, Llama 3.1 405B 1,138; models carry 30-60 keys.
MAX_TENSORS = 65_536  # per file; a tensor info costs ~0.5 KB of Python objects, so <= ~35 MB
MAX_KV = 65_536
# Gemma 3 has 262,144 tokens and Llama 3 280,147 merges: 4,194,304 is 15x the largest real array.
MAX_ARRAY = 4_194_304
# Each skipped string costs a loop step (~0.3 us): Llama 3's tokens and merges are 410k strings.
MAX_STRINGS = MAX_ARRAY  # strings in arrays, over the whole header
# Short arrays are decoded into Python objects (a u32 becomes ~36 bytes): real models decode a few
# hundred entries (per-layer values), so 1M entries over the whole header bound that growth to ~40 MB.
MAX_DECODED = 1 << 20
# Chat templates are 2-60 KB, tokens a few bytes; 16 MiB per string leaves room and caps one decode.
MAX_STRING = 16 * 1024 * 1024
MAX_TENSOR_NAME = 256  # ggml itself allows 63 bytes (GGML_MAX_NAME)
# The Gemma 3 and Llama 3 headers (vocabulary, scores, merges) are 6-8 MB; nothing past 128 MiB is read.
MAX_HEADER_BYTES = 128 * 1024 * 1024
MAX_DIMS = 4  # GGML_MAX_DIMS: llama.cpp refuses more
_INT64_MAX = 2**63 - 1
_CHUNK = 1 << 20
_U64 = struct.Struct("<Q")

_SCALARS = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
_INT_TYPES = {
    GGUFValueType.UINT8,
    GGUFValueType.INT8,
    GGUFValueType.UINT16,
    GGUFValueType.INT16,
    GGUFValueType.UINT32,
    GGUFValueType.INT32,
    GGUFValueType.UINT64,
    GGUFValueType.INT64,
}


class DamagedGGUF(ConfigError):
    """A GGUF file whose header cannot be trusted; the message is one printable line naming the file."""

    def __init__(self, what: str, path: Path | str) -> None:
        super().__init__(f"damaged GGUF: {printable(what, 300)} ({printable(path, 300)})")


@dataclass(frozen=True)
class SkippedArray:
    """A metadata array too long to be worth decoding: only its element count."""

    count: int


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor table."""

    name: str
    dims: tuple[int, ...]
    type_id: int
    offset: int  # absolute position of the data in the file
    n_elements: int
    n_bytes: int


class _Fault(Exception):
    """The header is damaged; the message says where (the file name is added by :func:`read_header`)."""


class _Stream:
    """Reads the header sequentially in chunks, never past the file's end or :data:`MAX_HEADER_BYTES`."""

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self.fh, self.size = fh, size
        self.buf, self.off, self.base = b"", 0, 0  # buf[off] is the byte at file offset base + off
        self.strings = 0  # strings read or skipped in arrays so far
        self.decoded = 0  # array entries decoded into Python objects so far

    @property
    def pos(self) -> int:
        """Offset of the next byte in the file."""
        return self.base + self.off

    def _check(self, n: int, what: str) -> None:
        end = self.pos + n
        if end > self.size:
            raise _Fault(
                f"truncated: the file ends inside {what} (needs {end:,} bytes, file has {self.size:,})"
            )
        if end > MAX_HEADER_BYTES:
            raise _Fault(f"header passes {MAX_HEADER_BYTES:,} bytes at {what}")

    def take(self, n: int, what: str) -> bytes | memoryview:
        """The next ``n`` bytes (``n`` already checked against the caps)."""
        self._check(n, what)
        if self.off + n > len(self.buf):
            rest = self.buf[self.off :]
            more = self.fh.read(max(n - len(rest), _CHUNK))
            self.buf, self.base, self.off = rest + more, self.pos, 0
            if len(self.buf) < n:  # the file shrank under us
                raise _Fault(f"truncated: the file ends inside {what}")
        out = memoryview(self.buf)[self.off : self.off + n]
        self.off += n
        return out

    def unpack(self, fmt: str, what: str) -> Any:
        """One little-endian scalar."""
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def skip(self, n: int, what: str) -> None:
        """Move past ``n`` bytes without reading them."""
        self._check(n, what)
        if self.off + n <= len(self.buf):
            self.off += n
        else:
            target = self.pos + n
            self.fh.seek(target)
            self.buf, self.base, self.off = b"", target, 0

    def length(self, what: str, cap: int, unit: int = 1) -> int:
        """A u64 count of ``unit``-byte items, refused above ``cap`` or beyond the end of the file."""
        n = self.unpack("<Q", what)
        if n > cap:
            raise _Fault(f"{what} is {n:,} (at most {cap:,} accepted)")
        if self.pos + n * unit > self.size:
            raise _Fault(f"truncated: {what} is {n:,}, more than the rest of the file holds")
        return int(n)

    def skip_strings(self, count: int, what: str) -> None:
        """Move past ``count`` strings: a tight loop over the buffered chunk, the checked path between."""
        unpack_from, i = _U64.unpack_from, 0
        while i < count:
            buf, off, end = self.buf, self.off, len(self.buf)
            while i < count and off + 8 <= end:
                n = unpack_from(buf, off)[0]
                if off + 8 + n > end:  # also stops at any length too large to be in this chunk
                    break
                off, i = off + 8 + n, i + 1
            self.off = off
            if self.pos > MAX_HEADER_BYTES:
                raise _Fault(f"header passes {MAX_HEADER_BYTES:,} bytes at {what}")
            if i < count:  # the next string crosses the chunk: read it the checked way
                self.skip(self.length(f"length of {what}[{i}]", MAX_STRING), what)
                i += 1

    def string(self, what: str, cap: int = MAX_STRING) -> str:
        """A GGUF string (u64 length, UTF-8 bytes)."""
        n = self.length(f"length of {what}", cap)
        return bytes(self.take(n, what)).decode("utf-8", "replace")

    def value(self, vtype: int, what: str) -> Any:
        """A metadata value of type ``vtype``; long arrays come back as :class:`SkippedArray`."""
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[GGUFValueType(vtype)], what)
        if vtype == GGUFValueType.STRING:
            return self.string(what)
        if vtype != GGUFValueType.ARRAY:
            raise _Fault(f"{what} has unknown value type {vtype}")
        etype = self.unpack("<I", f"element type of {what}")
        if etype in _SCALARS:
            width = struct.calcsize(_SCALARS[GGUFValueType(etype)])
        elif etype == GGUFValueType.STRING:
            width = 8
        else:  # llama.cpp refuses nested arrays as well
            raise _Fault(f"{what} is an array of unsupported element type {etype}")
        count = self.length(f"element count of {what}", MAX_ARRAY, width)
        if etype == GGUFValueType.STRING:
            self.strings += count
            if self.strings > MAX_STRINGS:
                raise _Fault(f"more than {MAX_STRINGS:,} strings in the header at {what}")
        if count <= MAX_DECODED_ARRAY:
            self.decoded += count
            if self.decoded > MAX_DECODED:
                raise _Fault(f"more than {MAX_DECODED:,} short-array entries in the header at {what}")
            if etype in _SCALARS:  # one unpack for the whole array
                code = _SCALARS[GGUFValueType(etype)][1]
                return list(struct.unpack(f"<{count}{code}", self.take(count * width, what)))
            return [self.string(f"{what}[{i}]") for i in range(count)]
        if etype == GGUFValueType.STRING:
            self.skip_strings(count, what)
        else:
            self.skip(count * width, what)
        return SkippedArray(count)


def read_header(path: Path) -> tuple[dict[str, Any], list[TensorInfo]]:
    """Metadata and tensor table of one GGUF file; :class:`DamagedGGUF` if the header is not sound."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        raise ConfigError(f"{printable(path)}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{printable(path)}: is a directory, not a GGUF file") from None
    except OSError as exc:
        raise ConfigError(f"{printable(path)}: cannot read ({exc.strerror})") from None
    with fh:
        try:
            size = path.stat().st_size
            return _parse(_Stream(fh, size), size)
        except _Fault as exc:
            raise DamagedGGUF(str(exc), path) from None
        except OSError as exc:
            raise ConfigError(f"{printable(path)}: cannot read ({exc.strerror})") from None


def _parse(cur: _Stream, size: int) -> tuple[dict[str, Any], list[TensorInfo]]:
    if size < 4:
        raise _Fault(f"no GGUF magic, not a GGUF file ({size} bytes)")
    magic = bytes(cur.take(4, "the magic"))
    if magic != MAGIC:
        raise _Fault(f"no GGUF magic, not a GGUF file (starts with {magic!r})")
    version = cur.unpack("<I", "the version")
    if version not in (2, 3):
        raise _Fault(f"version {version} is not supported (2 or 3 expected)")
    # the least a tensor info takes: name length, n_dims, type, offset; a pair: key length, type, 1 byte
    n_tensors = cur.length("tensor count", MAX_TENSORS, 24)
    n_kv = cur.length("metadata key count", MAX_KV, 13)
    meta: dict[str, Any] = {}
    for i in range(n_kv):
        key = cur.string(f"key {i}")
        if key in meta:
            raise _Fault(f"duplicate key {key!r}")
        meta[key] = cur.value(cur.unpack("<I", f"type of {key!r}"), f"value of {key!r}")
    alignment = _alignment(meta)
    raw = []
    seen: set[str] = set()
    for i in range(n_tensors):
        name = cur.string(f"name of tensor {i}", MAX_TENSOR_NAME)
        if name in seen:
            raise _Fault(f"duplicate tensor name {name!r}")
        seen.add(name)
        what = f"tensor {name!r}"
        n_dims = cur.unpack("<I", what)
        if n_dims > MAX_DIMS:
            raise _Fault(f"{what} has {n_dims} dimensions (at most {MAX_DIMS})")
        *dims, type_id, offset = struct.unpack(f"<{n_dims}QIQ", cur.take(8 * n_dims + 12, what))
        raw.append((name, tuple(dims), type_id, offset))
    data_start = (cur.pos + alignment - 1) // alignment * alignment
    return meta, [_tensor(*r, data_start, alignment, size) for r in raw]


def _alignment(meta: dict[str, Any]) -> int:
    value = meta.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value & (value - 1):
        raise _Fault(f"general.alignment is {value!r}, not a power of two")
    return value


def _tensor(
    name: str, dims: tuple[int, ...], type_id: int, offset: int, data_start: int, alignment: int, size: int
) -> TensorInfo:
    """One checked tensor info: known type, whole blocks, no empty or overflowing shape, data in the file."""
    gtype = GGML_TYPES_BY_ID.get(type_id)
    if gtype is None:
        raise _Fault(f"tensor {name!r} has an unknown ggml type {type_id}")
    n = 1
    for d in dims:
        if d == 0:
            raise _Fault(f"tensor {name!r} has a zero dimension {list(dims)}")
        n *= d
        if n > _INT64_MAX:
            raise _Fault(f"tensor {name!r} has more elements than int64 holds {list(dims)}")
    if dims and dims[0] % gtype.block_size:
        raise _Fault(
            f"tensor {name!r}: rows of {dims[0]} do not fill {gtype.name} blocks of {gtype.block_size}"
        )
    if offset % alignment:
        raise _Fault(f"tensor {name!r} has offset {offset:,}, not a multiple of the alignment {alignment}")
    n_bytes = n // gtype.block_size * gtype.type_size
    end = data_start + offset + n_bytes
    if end > size:
        raise _Fault(f"tensor {name!r} ends at byte {end:,}, past the end of the file ({size:,} bytes)")
    return TensorInfo(name, dims, type_id, data_start + offset, n, n_bytes)
