"""The examples in docs/bench.md marked ``<!-- test: fake-upstream -->`` run against the fake upstream."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from haloserve.cli import main
from haloserve.testing.upstream import FakeUpstream

DOC = Path(__file__).resolve().parents[2] / "docs" / "bench.md"
BLOCK = re.compile(r"<!-- test: fake-upstream -->\s*```bash\n(.*?)```", re.S)


def examples() -> list[str]:
    return [line for block in BLOCK.findall(DOC.read_text()) for line in block.splitlines() if line.strip()]


def test_docs_have_tested_examples() -> None:
    assert len(examples()) >= 5 and all(line.startswith("halo bench") for line in examples())


@pytest.mark.slow
def test_documented_examples_run(
    upstream: FakeUpstream,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    upstream.configure(ttft_ms=0, itl_ms=0)  # timing is not what these examples check
    for i, line in enumerate(examples()):
        argv = shlex.split(line.replace("http://127.0.0.1:8080", upstream.url))[1:]
        extra = [] if i == 0 else ["--no-plots"]  # drawing is slow; tested elsewhere, kept for the first
        assert main([*argv, *extra, "--no-progress"] if argv[1] != "compare" else [*argv, *extra]) == 0, line
        capsys.readouterr()
    assert (tmp_path / "compare" / "compare.md").is_file() and (tmp_path / "run-a" / "cdf.png").is_file()
