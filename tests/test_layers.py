"""The test suite's own rules (CONTRIBUTING.md, "Running a part of the tests"): the layer guard in
tests/conftest.py fails unmarked slow tests, every test directory is a package, and test modules import
helpers only from their own package's conftest."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from haloserve.testing.remote import RemoteServer
from tests.conftest import pytest_runtest_setup

TESTS = Path(__file__).parent


def test_an_unmarked_test_cannot_start_python() -> None:
    with pytest.raises(
        pytest.fail.Exception, match=r"is not marked @pytest\.mark\.process or @pytest\.mark\.model"
    ):
        subprocess.run([sys.executable, "-c", "pass"], check=False)
    with pytest.raises(pytest.fail.Exception, match="Python child process"):
        subprocess.run("halo plan qwen3-8b", shell=True, check=False)
    assert subprocess.run(["true"], check=False).returncode == 0  # a small tool is fine


def test_an_unmarked_test_cannot_load_a_model_or_start_halo_serve(tmp_path: Path) -> None:
    params = llama_cpp.llama_model_default_params()
    with pytest.raises(pytest.fail.Exception, match=r"loads a model into llama\.cpp"):
        llama_cpp.llama_model_load_from_file(str(tmp_path / "none.gguf").encode(), params)
    server = RemoteServer(["--threads", "1"])
    try:
        with pytest.raises(pytest.fail.Exception, match=r"starts `halo serve` with the llama\.cpp engine"):
            server.start()
        assert server.proc is None  # refused before anything started
    finally:
        server.stop()
        server.log_path.unlink()
    fake = RemoteServer(["--engine", "fake"])
    with pytest.raises(pytest.fail.Exception, match="Python child process"):  # a process all the same
        fake.start()
    fake.stop()
    fake.log_path.unlink()


class _Item:
    """The parts of a pytest item the set-up check reads."""

    nodeid = "tests/x/test_y.py::test_z"

    def __init__(self, fixturenames: list[str], markers: set[str]) -> None:
        self.fixturenames = fixturenames
        self.markers = markers

    def get_closest_marker(self, name: str) -> Any:
        return name if name in self.markers else None


def test_the_model_path_fixture_needs_the_model_marker() -> None:
    with pytest.raises(pytest.fail.Exception, match="test_z uses the model_path fixture"):
        pytest_runtest_setup(_Item(["server", "model_path"], set()))  # type: ignore[arg-type]
    pytest_runtest_setup(_Item(["server", "model_path"], {"model"}))  # type: ignore[arg-type]
    pytest_runtest_setup(_Item(["port"], set()))  # type: ignore[arg-type]


def _python_dirs() -> list[Path]:
    return sorted({p.parent for p in TESTS.rglob("*.py")})


def test_every_test_directory_is_a_package() -> None:
    missing = [str(d.relative_to(TESTS.parent)) for d in _python_dirs() if not (d / "__init__.py").is_file()]
    assert not missing, f"add an empty __init__.py to: {', '.join(missing)}"


def test_modules_import_only_their_own_packages_helpers() -> None:
    wrong = []
    for path in sorted(TESTS.rglob("*.py")):
        own = ".".join(path.parent.relative_to(TESTS.parent).parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else ["(relative)"]
            for name in names:
                package, _, module = name.rpartition(".")
                if name == "(relative)":
                    wrong.append(f"{path.relative_to(TESTS.parent)}: a relative import")
                elif name.startswith("tests") and (package != own or module.startswith("test_")):
                    if path.name == "test_layers.py" and name == "tests.conftest":
                        continue  # this file tests the root conftest itself
                    wrong.append(f"{path.relative_to(TESTS.parent)}: {name}")
    assert not wrong, "import fixtures from conftest, helpers from haloserve.testing:\n" + "\n".join(wrong)


def test_no_pytestmark_in_a_conftest() -> None:
    # pytest ignores pytestmark in conftest.py: the tests beside it would look marked and not be
    marked = [str(p) for p in TESTS.rglob("conftest.py") if "pytestmark" in p.read_text(encoding="utf-8")]
    assert not marked
