"""Run the examples of docs/plan.md, so the documentation cannot drift from the program.

A fenced ``console`` block preceded by ``<!-- example -->`` holds one ``$ halo ...`` command and its
exact output (printed 100 columns wide); ``<!-- example: json-subset -->`` marks a JSON excerpt that the
command's real JSON output must contain. Commands run in a directory holding the bundled model as
``SmolLM2-135M-Instruct.Q4_1.gguf``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from haloserve.cli import main

DOC = Path(__file__).resolve().parents[2] / "docs" / "plan.md"
EXAMPLE = re.compile(r"<!-- example(?:: (?P<mode>[\w-]+))? -->\n```console\n(?P<body>.*?)```", re.S)


def examples() -> list[tuple[str, str, str]]:
    found = []
    for m in EXAMPLE.finditer(DOC.read_text(encoding="utf-8")):
        first, _, rest = m.group("body").partition("\n")
        assert first.startswith("$ halo "), first
        found.append((m.group("mode") or "exact", first[2:], rest))
    return found


def contains(actual: Any, expected: Any) -> bool:
    """True when ``expected`` is a subset of ``actual`` (dict keys recursively, other values equal)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and contains(actual[k], v) for k, v in expected.items()
        )
    return bool(actual == expected)


def test_the_docs_have_the_required_examples() -> None:
    commands = [cmd for _, cmd, _ in examples()]
    assert "halo plan qwen3-30b-a3b --ctx 262144 --parallel 2 --kv-type q8_0 --ram 128" in commands
    assert any(
        c.startswith("halo plan ./SmolLM2-135M-Instruct.Q4_1.gguf") and "--json" in c for c in commands
    )
    assert len(commands) >= 3


@pytest.mark.parametrize(("mode", "command", "expected"), examples(), ids=lambda v: str(v)[:60])
@pytest.mark.model
def test_documented_example(
    mode: str,
    command: str,
    expected: str,
    model_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in list(os.environ):
        if name.startswith(("LLAMA_ARG_", "HALO_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("COLUMNS", "100")
    (tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf").symlink_to(model_path)
    monkeypatch.chdir(tmp_path)
    code = main(shlex.split(command)[1:])
    out, err = capsys.readouterr()
    assert code == 0, err
    if mode == "json-subset":
        assert contains(json.loads(out), json.loads(expected))
    else:
        actual = [line.rstrip() for line in out.rstrip("\n").splitlines()]
        assert actual == [line.rstrip() for line in expected.rstrip("\n").splitlines()]
