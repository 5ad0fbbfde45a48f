"""Terminal escapes from model files and peers are shown escaped by serve, bench, doctor and errors."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from rich.console import Console

from haloserve.cli import main
from haloserve.cli.render import markup_safe, print_json
from haloserve.doctor.report import render_report
from haloserve.doctor.result import CheckResult, Status
from haloserve.printable import printable

EVIL = "\x1b]0;pwned\x07\x1b[31m[bold]x\x9b2J\u202e"
RAW = ("\x1b", "\x07", "\x9b", "\u202e")
HALO = shutil.which("halo", path=str(Path(sys.executable).parent))


def no_raw_controls(text: str) -> bool:
    return not any(c in text for c in RAW)


def test_printable_and_markup_safe() -> None:
    assert printable(EVIL) == "\\x1b]0;pwned\\x07\\x1b[31m[bold]x\\x9b2J\\u202e"
    assert printable("a\tb\nc\r\x1b", multiline=True) == "a\tb\nc\\x0d\\x1b"
    assert printable("bad \udcff byte") == "bad \\udcff byte"  # a lone surrogate would make print() raise
    out = io.StringIO()
    Console(file=out, width=200).print(f"[bold]{markup_safe(EVIL)}[/]")
    assert out.getvalue().rstrip("\n") == printable(EVIL)  # "[bold]" stays text


def test_print_json_escapes_c1_and_surrogates(capsys: pytest.CaptureFixture[str]) -> None:
    print_json({"name": EVIL, "file": "a\udcffb"})
    out = capsys.readouterr().out
    assert no_raw_controls(out)
    assert json.loads(out) == {"name": EVIL, "file": "a\udcffb"}


def _gguf_with_duplicate_tensor(name: str) -> bytes:
    def s(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    head = (
        b"GGUF" + struct.pack("<IQQ", 3, 2, 1) + s("general.architecture") + struct.pack("<I", 8) + s("llama")
    )
    for _ in range(2):
        head += s(name) + struct.pack("<IQIQ", 1, 32, 0, 0)
    return head + bytes(-len(head) % 32 + 128)


@pytest.mark.process
def test_serve_refuses_a_damaged_gguf_without_raw_escapes(tmp_path: Path) -> None:
    # llama.cpp refuses the file and logs the tensor name; halo names the damage with the planner's reader
    path = tmp_path / "evil.gguf"
    path.write_bytes(_gguf_with_duplicate_tensor(EVIL[:60]))
    assert HALO is not None
    proc = subprocess.run(
        [HALO, "serve", "--model", str(path), "--port", "0"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert no_raw_controls(proc.stdout + proc.stderr), proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("halo serve: error: model failed to load: damaged GGUF: duplicate tensor name"), (
        last
    )
    assert "\\x1b]0;pwned\\x07" in last and "Traceback" not in proc.stderr


class _HostilePeer(BaseHTTPRequestHandler):
    """An OpenAI-shaped server whose model id and error messages carry terminal escapes."""

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(200, {"object": "list", "data": [{"id": EVIL, "object": "model"}]})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send(500, {"error": {"message": EVIL, "type": "server_error", "param": None, "code": None}})

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def hostile_peer() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HostilePeer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_bench_shows_server_messages_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a peer's text reaches the table title, the error lines, the notes and the final error
    with hostile_peer() as url:
        argv = ["bench", "--url", url, "--concurrency", "1", "--num-prompts", "2", "--input-len", "8"]
        argv += [
            "--output-len",
            "4",
            "--warmup",
            "0",
            "--no-progress",
            "--output",
            str(tmp_path),
            "--no-plots",
        ]
        code = main(argv)
    out, err = capsys.readouterr()
    assert code == 1
    assert no_raw_controls(out + err), out + err
    assert "\\x1b]0;pwned\\x07" in err and "\\x1b]0;pwned\\x07" in out and "[bold]x" in out

    results = str(tmp_path / "results.json")
    main(["bench", "compare", results, results])
    out, err = capsys.readouterr()
    assert no_raw_controls(out + err)


def test_doctor_report_shows_observed_text_escaped() -> None:
    result = CheckResult(
        id="models",
        title="models",
        status=Status.WARN,
        observed=f"largest {EVIL}.gguf",
        why=EVIL,
        fix=f"rm {EVIL}\nsecond line",
        notes=(f"note {EVIL}",),
    )
    buf = io.StringIO()
    render_report(Console(file=buf, width=300), [result], root_label="captured")
    text = buf.getvalue()
    assert no_raw_controls(text)
    assert "\\x1b]0;pwned\\x07" in text and "second line" in text
