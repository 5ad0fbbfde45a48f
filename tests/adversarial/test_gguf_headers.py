"""Hostile GGUF headers: ``halo plan`` fails in one ``damaged GGUF:`` line, in bounded memory and time.

Each file is written here byte by byte (the ``gguf`` package's writer refuses most of these), so the
field boundaries of a small valid header are known and every truncation point can be tried.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haloserve.cli import main
from haloserve.planner.gguf_header import MAX_ARRAY, MAX_DECODED, MAX_KV, MAX_STRING, MAX_STRINGS, MAX_TENSORS

U8, U32, U64, F32, STR, ARR = 0, 4, 10, 6, 8, 9
TB = 1 << 40
HALO = shutil.which("halo", path=str(Path(sys.executable).parent))
MEMORY_LIMIT = 1536 << 20  # RLIMIT_AS of the child: the old reader needed 2.6 GB on the sparse file
RSS_BOUND = 300 << 20


class Header:
    """A GGUF header built field by field; ``bounds`` holds the offset where each field ends."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.bounds: list[int] = []

    def field(self, raw: bytes) -> Header:
        self.data += raw
        self.bounds.append(len(self.data))
        return self

    def u32(self, v: int) -> Header:
        return self.field(struct.pack("<I", v))

    def u64(self, v: int) -> Header:
        return self.field(struct.pack("<Q", v))

    def string(self, s: str | bytes) -> Header:
        raw = s.encode() if isinstance(s, str) else s
        return self.u64(len(raw)).field(raw)

    def kv(self, key: str, vtype: int, value: object) -> Header:
        self.string(key).u32(vtype)
        if vtype == STR:
            return self.string(value)  # type: ignore[arg-type]
        return self.u32(value) if vtype == U32 else self.field(struct.pack("<f", value))  # type: ignore[arg-type]


EMBD, VOCAB, N_LAYER = 64, 32, 2


TENSORS = ("token_embd.weight", "output.weight")


def valid_model(
    name: str = "tiny", tensor_dims: tuple[int, ...] = (EMBD, VOCAB), tensors: tuple[str, ...] = TENSORS
) -> bytes:
    """A small GGUF ``halo plan`` accepts: llama metadata and two F32 tensors."""
    h = header(name, tensor_dims, tensors)
    return bytes(h.data) + bytes(-len(h.data) % 32) + bytes(2 * 4 * EMBD * VOCAB)


def header(
    name: str = "tiny", tensor_dims: tuple[int, ...] = (EMBD, VOCAB), tensors: tuple[str, ...] = TENSORS
) -> Header:
    """The header of :func:`valid_model`, with its field boundaries."""
    h = Header().field(b"GGUF").u32(3).u64(2).u64(7)
    h.kv("general.architecture", STR, "llama").kv("general.name", STR, name)
    h.kv("llama.block_count", U32, N_LAYER).kv("llama.embedding_length", U32, EMBD)
    h.kv("llama.attention.head_count", U32, 4).kv("llama.context_length", U32, 256)
    h.kv("llama.rope.freq_base", F32, 10000.0)
    offset = 0
    for tensor in tensors:
        h.string(tensor).u32(len(tensor_dims))
        for d in tensor_dims:
            h.u64(d)
        h.u32(0).u64(offset)  # F32
        offset += 4 * EMBD * VOCAB
    return h


def plan_in_process(path: Path, *args: str) -> tuple[int, str, str]:
    """``halo plan`` run through the CLI entry point in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["plan", str(path), *args])
    return code, out.getvalue(), err.getvalue()


def plan_child(path: Path, *args: str) -> tuple[int, str, str, int, float]:
    """``halo plan`` in a child process under an address-space limit: exit, stdout, stderr, max RSS, s."""
    assert HALO is not None

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "HALO_DEBUG": ""}
    start = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [HALO, "plan", str(path), *args], stdout=out, stderr=err, preexec_fn=limit, env=env
        )
        while True:  # wait4 rather than wait: the child's own peak RSS
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - start > 120:
                proc.kill()
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return (
            proc.returncode,
            out.read().decode(),
            err.read().decode(),
            usage.ru_maxrss * 1024,
            time.monotonic() - start,
        )


def assert_damaged(code: int, out: str, err: str, what: str = "") -> None:
    """One line ``halo plan: error: damaged GGUF: ...``, non-zero exit, nothing else."""
    assert code != 0 and out == "", (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("halo plan: error: damaged GGUF: "), err
    assert what in lines[0], err
    assert "Traceback" not in err and "internal error" not in err


def test_the_valid_model_plans(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(valid_model())
    code, out, err = plan_in_process(path, "--json")
    assert code == 0 and err == "", err
    data = json.loads(out)
    assert data["spec"]["name"] == "tiny" and data["weights_bytes"] > 0


def sparse(tmp_path: Path, head: bytes, size: int = 2 * TB) -> Path:
    """A sparse file of ``size`` bytes that holds only ``head``."""
    path = tmp_path / "sparse.gguf"
    with path.open("wb") as fh:
        fh.write(head)
        fh.truncate(size)
    assert path.stat().st_blocks * 512 < 1 << 20  # really sparse: no data behind the size
    return path


HOSTILE_HEADERS = {
    # the report of issue 13: the count-against-file-size guard passed on a 2 TB sparse file
    "2^40 tensors": (Header().field(b"GGUF").u32(3).u64(1 << 40).u64(0), "tensor count"),
    "2^40 keys": (Header().field(b"GGUF").u32(3).u64(0).u64(1 << 40), "metadata key count"),
    "just over the tensor cap": (
        Header().field(b"GGUF").u32(3).u64(MAX_TENSORS + 1).u64(0),
        f"at most {MAX_TENSORS:,}",
    ),
    "just over the key cap": (Header().field(b"GGUF").u32(3).u64(0).u64(MAX_KV + 1), f"at most {MAX_KV:,}"),
    "1 TB key": (Header().field(b"GGUF").u32(3).u64(0).u64(1).u64(TB), "length of key 0"),
    "1 TB string value": (
        Header().field(b"GGUF").u32(3).u64(0).u64(1).string("general.name").u32(STR).u64(TB),
        f"at most {MAX_STRING:,}",
    ),
    "2^40-element array": (
        Header()
        .field(b"GGUF")
        .u32(3)
        .u64(0)
        .u64(1)
        .string("tokenizer.ggml.tokens")
        .u32(ARR)
        .u32(STR)
        .u64(1 << 40),
        "element count of value of 'tokenizer.ggml.tokens'",
    ),
    "array just over the cap": (
        Header().field(b"GGUF").u32(3).u64(0).u64(1).string("t").u32(ARR).u32(U8).u64(MAX_ARRAY + 1),
        f"at most {MAX_ARRAY:,}",
    ),
    # zeros read from a sparse file are a valid empty tensor name: the second one is a duplicate
    "zeros as tensors": (Header().field(b"GGUF").u32(3).u64(1000).u64(0), "duplicate tensor name ''"),
}


@pytest.mark.parametrize("case", list(HOSTILE_HEADERS))
@pytest.mark.process
def test_hostile_header_on_a_2tb_sparse_file(case: str, tmp_path: Path) -> None:
    head, what = HOSTILE_HEADERS[case]
    path = sparse(tmp_path, bytes(head.data))
    code, out, err, rss, elapsed = plan_child(path)
    assert_damaged(code, out, err, what)
    assert rss < RSS_BOUND, f"{rss / 2**20:.0f} MiB"
    assert elapsed < 60  # ~1 s here, mostly start-up; the old reader ran for 40 s and 2.6 GB


@pytest.mark.process
def test_header_byte_cap_on_a_sparse_file(tmp_path: Path) -> None:
    # eight arrays of 4M u64 (32 MiB each) in a 2 TB sparse file: the 128 MiB header cap stops the
    # reader in the fourth, whatever the file size claims
    path = tmp_path / "sparse.gguf"
    with path.open("wb") as fh:
        fh.write(bytes(Header().field(b"GGUF").u32(3).u64(0).u64(8).data))
        for i in range(8):
            fh.write(bytes(Header().string(f"t{i}").u32(ARR).u32(U64).u64(MAX_ARRAY).data))
            fh.seek(8 * MAX_ARRAY, io.SEEK_CUR)
        fh.truncate(2 * TB)
    code, out, err, rss, elapsed = plan_child(path)
    assert_damaged(code, out, err, "header passes 134,217,728 bytes at value of 't3'")
    assert rss < RSS_BOUND, f"{rss / 2**20:.0f} MiB"
    assert elapsed < 60


@pytest.mark.process
def test_string_budget_on_a_sparse_file(tmp_path: Path) -> None:
    # two arrays of 4M empty strings: skipping strings costs a loop step each, so the header may hold
    # MAX_STRINGS of them in all (Llama 3 has 410k, Gemma 3 262k)
    path = tmp_path / "sparse.gguf"
    with path.open("wb") as fh:
        fh.write(bytes(Header().field(b"GGUF").u32(3).u64(0).u64(2).data))
        for i in range(2):
            fh.write(bytes(Header().string(f"t{i}").u32(ARR).u32(STR).u64(MAX_STRINGS // 2 + 1).data))
            fh.seek(8 * (MAX_STRINGS // 2 + 1), io.SEEK_CUR)
        fh.truncate(2 * TB)
    code, out, err, rss, elapsed = plan_child(path)
    assert_damaged(code, out, err, f"more than {MAX_STRINGS:,} strings in the header at value of 't1'")
    assert rss < RSS_BOUND, f"{rss / 2**20:.0f} MiB"
    assert elapsed < 60


@pytest.mark.process
def test_short_arrays_cannot_amplify_memory(tmp_path: Path) -> None:
    # short arrays are decoded (4 bytes of u32 become ~36 bytes of Python): 300 arrays of 4,096 would be
    # 44 MB of objects from a 5 MB file; the decoded-entry budget stops it at 1M entries
    h = Header().field(b"GGUF").u32(3).u64(0).u64(300)
    for i in range(300):
        h.string(f"a{i}").u32(ARR).u32(U32).u64(4096).field(
            struct.pack("<4096I", *range(10**6, 10**6 + 4096))
        )
    path = tmp_path / "arrays.gguf"
    path.write_bytes(bytes(h.data))
    code, out, err, rss, _ = plan_child(path)
    assert_damaged(
        code, out, err, f"more than {MAX_DECODED:,} short-array entries in the header at value of 'a256'"
    )
    assert rss < RSS_BOUND


@pytest.mark.parametrize(
    ("dims", "what"),
    [
        ((EMBD, 0), "zero dimension"),
        ((0,), "zero dimension"),
        ((1 << 32, 1 << 32, 1 << 32), "more elements than int64"),
        ((EMBD, VOCAB, 1, 1, 1), "5 dimensions"),
    ],
)
def test_bad_tensor_shapes(dims: tuple[int, ...], what: str, tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(valid_model(tensor_dims=dims))
    assert_damaged(*plan_in_process(path), what)


def edited(replace: tuple[bytes, bytes]) -> bytes:
    data = valid_model()
    assert data.count(replace[0]) == 1, replace
    return data.replace(*replace)


def _offset(value: int) -> tuple[bytes, bytes]:
    """The edit that gives output.weight the data offset ``value``."""
    info = b"output.weight" + struct.pack("<IQQI", 2, EMBD, VOCAB, 0)
    return info + struct.pack("<Q", 4 * EMBD * VOCAB), info + struct.pack("<Q", value)


EDITS = {
    "bad magic": ((b"GGUF", b"GGUX"), "no GGUF magic"),
    "version 1": ((b"GGUF\x03\x00\x00\x00", b"GGUF\x01\x00\x00\x00"), "version 1 is not supported"),
    "version 2^32-1": ((b"GGUF\x03\x00\x00\x00", b"GGUF\xff\xff\xff\xff"), "version 4294967295"),
    "unknown ggml type": (
        (
            b"output.weight" + struct.pack("<IQQI", 2, EMBD, VOCAB, 0),
            b"output.weight" + struct.pack("<IQQI", 2, EMBD, VOCAB, 99),
        ),
        "unknown ggml type 99",
    ),
    "rows not in whole blocks": (
        (
            b"output.weight" + struct.pack("<IQQI", 2, EMBD, VOCAB, 0),
            b"output.weight" + struct.pack("<IQQI", 2, EMBD, VOCAB, 10),
        ),
        "q2_k blocks of 256",
    ),
    "misaligned offset": (_offset(4 * EMBD * VOCAB + 4), "not a multiple of the alignment"),
    "offset past the end": (_offset(1 << 62), "past the end of the file"),
    "offset 2^64-1": (_offset(2**64 - 1), "offset"),
    "zero layers": (
        (
            b"llama.block_count" + struct.pack("<II", U32, N_LAYER),
            b"llama.block_count" + struct.pack("<II", U32, 0),
        ),
        "llama.block_count is 0",
    ),
    "2^32-1 layers": (
        (
            b"llama.block_count" + struct.pack("<II", U32, N_LAYER),
            b"llama.block_count" + struct.pack("<II", U32, 2**32 - 1),
        ),
        "llama.block_count is",
    ),
    "zero embedding": (
        (
            b"llama.embedding_length" + struct.pack("<II", U32, EMBD),
            b"llama.embedding_length" + struct.pack("<II", U32, 0),
        ),
        "embedding_length is 0",
    ),
    "zero heads": (
        (
            b"llama.attention.head_count" + struct.pack("<II", U32, 4),
            b"llama.attention.head_count" + struct.pack("<II", U32, 0),
        ),
        "head_count is 0",
    ),
    "zero context": (
        (
            b"llama.context_length" + struct.pack("<II", U32, 256),
            b"llama.context_length" + struct.pack("<II", U32, 0),
        ),
        "context_length is 0",
    ),
    "a float for an integer": (
        (b"llama.context_length" + struct.pack("<I", U32), b"llama.context_length" + struct.pack("<I", F32)),
        "expected an integer",
    ),
    "NaN rope base": ((struct.pack("<f", 10000.0), struct.pack("<f", float("nan"))), "expected a number"),
    "no architecture": ((b"general.architecture", b"general.architectur_"), "general.architecture is None"),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_damaged_fields(case: str, tmp_path: Path) -> None:
    replace, what = EDITS[case]
    path = tmp_path / "m.gguf"
    path.write_bytes(edited(replace))
    assert_damaged(*plan_in_process(path), what)


def test_duplicate_key(tmp_path: Path) -> None:
    h = Header().field(b"GGUF").u32(3).u64(0).u64(2).kv("general.name", STR, "a").kv("general.name", STR, "b")
    path = tmp_path / "dup.gguf"
    path.write_bytes(bytes(h.data))
    assert_damaged(*plan_in_process(path), "duplicate key 'general.name'")


def test_bad_alignment(tmp_path: Path) -> None:
    for alignment, what in ((0, "general.alignment is 0"), (3, "not a power of two")):
        h = Header().field(b"GGUF").u32(3).u64(0).u64(1).kv("general.alignment", U32, alignment)
        path = tmp_path / f"a{alignment}.gguf"
        path.write_bytes(bytes(h.data))
        assert_damaged(*plan_in_process(path), what)


@pytest.mark.slow
def test_truncated_at_every_field_boundary(tmp_path: Path) -> None:
    h = header()
    full = valid_model()
    cuts = sorted({b for b in h.bounds} | {b - 1 for b in h.bounds} | {len(full) - 1, len(h.data) + 5})
    path = tmp_path / "cut.gguf"
    for cut in cuts:
        if cut >= len(full):
            continue
        path.write_bytes(full[:cut])
        code, out, err = plan_in_process(path)
        assert_damaged(code, out, err, "truncated" if cut < len(h.data) else "")
    assert len(cuts) > 80


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4))
@pytest.mark.slow
def test_random_byte_flips_never_crash(flips: list[tuple[int, int]], tmp_path: Path) -> None:
    data = bytearray(valid_model(name="flip\x1b[2J"))
    n_header = len(header().data)
    for pos, value in flips:
        data[pos % n_header] = value  # the header is where the parsing happens
    path = tmp_path / "flip.gguf"
    path.write_bytes(data)
    code, out, err = plan_in_process(path)
    assert "Traceback" not in err and "internal error" not in err, err
    assert "\x1b" not in out + err
    if code != 0:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("halo plan: error: damaged GGUF: "), err


HOSTILE_NAME = "\x1b]0;pwned\x07\x1b[31m[bold]x\x9b2J\u202e"


@pytest.mark.process
def test_escape_sequences_in_metadata_are_not_printed(tmp_path: Path) -> None:
    path = tmp_path / "evil[red].gguf"
    path.write_bytes(valid_model(name=HOSTILE_NAME))
    code, out, err, _, _ = plan_child(path)
    assert code == 0, err
    for raw in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert raw not in out + err
    # shown escaped, and "[bold]" is text, not rich markup
    assert "\\x1b]0;pwned\\x07\\x1b[31m[bold]x\\x9b2J\\u202e" in out.splitlines()[0], out
    assert "evil[red].gguf" in out  # the path in the pasteable settings is not markup either

    code, out, err, _, _ = plan_child(path, "--json")
    assert code == 0
    for raw in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert raw not in out
    assert json.loads(out)["spec"]["name"] == HOSTILE_NAME  # JSON keeps the value, escaped


def test_duplicate_tensor_names_are_escaped_in_the_error(tmp_path: Path) -> None:
    evil = "\x1b]0;pwned\x07"
    path = tmp_path / "m.gguf"
    path.write_bytes(valid_model(tensors=(evil, evil)))
    code, out, err = plan_in_process(path)
    assert_damaged(code, out, err, "duplicate tensor name")
    assert "\x1b" not in err and "\\x1b]0;pwned\\x07" in err
