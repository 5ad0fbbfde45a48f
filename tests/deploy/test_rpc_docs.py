"""Run docs/rpc.md's `halo plan` and `halo deploy` examples top to bottom in one directory.

``<!-- example -->`` + a ``console`` block: one ``$ halo ...`` command and its exact output (100 columns);
``<!-- example: excerpt -->``: the lines shown appear in this order, ``...`` skipping any;
``<!-- example: json-subset -->``: the command's JSON output contains the JSON shown (lists item by item);
``<!-- create: FILE -->`` + a block: write FILE; ``<!-- file: FILE -->`` + a block: FILE contains it.
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

DOC = Path(__file__).resolve().parents[2] / "docs" / "rpc.md"
BLOCK = re.compile(
    r"<!-- (?P<kind>example|create|file)(?:: (?P<arg>[\w./-]+))? -->\n```\w*\n(?P<body>.*?)```", re.S
)


def blocks() -> list[tuple[str, str | None, str]]:
    return [(m["kind"], m["arg"], m["body"]) for m in BLOCK.finditer(DOC.read_text(encoding="utf-8"))]


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.rstrip("\n").splitlines()]


def contains(actual: Any, expected: Any) -> bool:
    """``expected`` is a subset of ``actual``: dict keys recursively, lists item by item, else equal."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and contains(actual[k], v) for k, v in expected.items()
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(contains(a, e) for a, e in zip(actual, expected, strict=True))
        )
    return bool(actual == expected)


def in_order(out: list[str], expected: list[str]) -> str | None:
    """The first expected line not found after the previous one (``None``: all found in order)."""
    position = 0
    for want in expected:
        if want == "...":
            continue
        try:
            position = out.index(want, position) + 1
        except ValueError:
            return want
    return None


def test_the_page_shows_plan_and_deploy() -> None:
    found = blocks()
    commands = [body.partition("\n")[0] for kind, _, body in found if kind == "example"]
    assert any("halo plan" in c and "--nodes 2" in c and "--node-address" in c for c in commands)
    assert any(c.startswith("$ halo deploy render") for c in commands)
    files = [arg for kind, arg, _ in found if kind == "file"]
    assert any(f and "rpc-worker" in f for f in files) and any(f and "halo-serve" in f for f in files)
    text = DOC.read_text(encoding="utf-8")
    for needed in ("CVE-2024-42479", "CVE-2024-42478", "CVE-2024-42477", "-DGGML_RPC=ON", "BENCHMARKS.md"):
        assert needed in text, needed


@pytest.mark.process  # `halo deploy render` builds the haloserve wheel with pip
def test_rpc_docs_examples_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(os.environ):
        if name.startswith(("LLAMA_ARG_", "HALO_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.chdir(tmp_path)
    for kind, arg, body in blocks():
        if kind == "create":
            (tmp_path / str(arg)).write_text(body)
            continue
        if kind == "file":
            assert body in (tmp_path / str(arg)).read_text(), f"docs excerpt not in {arg}:\n{body}"
            continue
        command, _, expected = body.partition("\n")
        assert command.startswith("$ halo "), command
        code = main(shlex.split(command)[2:])
        out, err = capsys.readouterr()
        assert code == 0, (command, err)
        if arg == "json-subset":
            assert contains(json.loads(out), json.loads(expected)), command
        elif arg == "excerpt":
            missing = in_order(_lines(out), _lines(expected))
            assert missing is None, f"`{command}` did not print, in order:\n{missing}\n--- it printed:\n{out}"
        else:
            assert _lines(out) == _lines(expected), command
