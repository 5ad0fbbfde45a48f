"""Run docs/deploy.md top to bottom in one directory, so the documentation cannot drift from the program.

``<!-- example -->`` + a ``console`` block: one ``$ halo ...`` command and its exact output (100 columns);
``<!-- example: error -->``: the same for a command that fails with exit code 2 (stderr);
``<!-- create: FILE -->`` + a block: write FILE; ``<!-- file: FILE -->`` + a block: FILE contains it.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from haloserve.cli import main

DOC = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"
BLOCK = re.compile(
    r"<!-- (?P<kind>example|create|file)(?:: (?P<arg>[\w./-]+))? -->\n```\w*\n(?P<body>.*?)```", re.S
)


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.rstrip("\n").splitlines()]


@pytest.mark.process
def test_docs_examples_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.chdir(tmp_path)
    blocks = list(BLOCK.finditer(DOC.read_text(encoding="utf-8")))
    kinds = [b.group("kind") for b in blocks]
    assert kinds.count("example") >= 7 and kinds.count("file") >= 5 and kinds.count("create") >= 3
    for block in blocks:
        kind, arg, body = block.group("kind"), block.group("arg"), block.group("body")
        if kind == "create":
            (tmp_path / str(arg)).write_text(body)
        elif kind == "file":
            assert body in (tmp_path / str(arg)).read_text(), f"docs excerpt not in {arg}:\n{body}"
        else:
            command, _, expected = body.partition("\n")
            assert command.startswith("$ halo "), command
            code = main(shlex.split(command)[2:])
            out, err = capsys.readouterr()
            if arg == "error":
                assert code == 2 and not out, (command, out)
                assert _lines(err) == _lines(expected), command
            else:
                assert code == 0, (command, err)
                assert _lines(out) == _lines(expected), command
