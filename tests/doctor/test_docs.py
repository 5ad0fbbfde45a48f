"""The examples in docs/doctor.md run, and print what the page says they print."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "doctor.md"


def console_blocks() -> list[list[tuple[str, list[str]]]]:
    """Each ```console block as (command, expected output lines) pairs; ``...`` skips output."""
    blocks = []
    for body in re.findall(r"```console\n(.*?)```", DOC.read_text(), flags=re.S):
        steps: list[tuple[str, list[str]]] = []
        for line in body.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            elif steps:
                steps[-1][1].append(line.rstrip())
        blocks.append(steps)
    return blocks


BLOCKS = console_blocks()


def test_the_page_has_examples() -> None:
    assert len(BLOCKS) >= 4
    assert all(steps and all(cmd.startswith("halo doctor") for cmd, _ in steps) for steps in BLOCKS)


@pytest.mark.parametrize("steps", BLOCKS, ids=[steps[0][0][:60] for steps in BLOCKS])
@pytest.mark.process
def test_example(steps: list[tuple[str, list[str]]], tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "COLUMNS": "100",
    }
    for command, expected in steps:
        command = command.replace("/tmp/", f"{tmp_path}/")
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=60,
            check=False,
        )
        lines = [line.rstrip() for line in done.stdout.splitlines()]
        position = 0
        for want in expected:
            if want == "...":
                continue
            want = want.replace("/tmp/", f"{tmp_path}/")
            try:
                position = lines.index(want, position) + 1
            except ValueError:
                pytest.fail(f"`{command}` did not print, in order:\n{want}\n--- it printed:\n{done.stdout}")
