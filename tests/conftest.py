"""Shared fixtures (the bundled model, a free port) and the guard that keeps the test layers honest.

Two markers split the suite into layers (docs in CONTRIBUTING.md):

- ``model``: the test uses the bundled GGUF: loads it into llama.cpp, here or in a ``halo serve`` child,
  or reads the file (through the ``model_path`` fixture).
- ``process``: the test starts a Python child process: a ``halo`` server or command, a fake upstream
  process, a build (small tools such as ``bash -n`` do not count).

A third, ``slow``, marks tests that do neither but take seconds (hypothesis searches, docs examples, timed
streams). Everything else is the fast layer (``make test-fast``: pure code, fakes and in-process servers),
which runs first. The guard fails a test that loads a model or starts a Python process without its
marker, so such a test cannot slip into the fast layer.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import llama_cpp
import pytest
from hypothesis import settings

from haloserve.bundled import bundled_model_path
from haloserve.testing.remote import RemoteServer, free_port

# CI runs the property tests on a fixed seed (Hypothesis' advice for CI): a red build then means a
# change broke something, not that the search found an old flaw this time. Local runs keep searching
# and print the blob that reproduces what they find.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

_current: list[pytest.Item] = []  # the test being set up, run or torn down (none while collecting)


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The bundled SmolLM2-135M-Instruct GGUF (installed by `make test`); needs the ``model`` marker."""
    return bundled_model_path()


@pytest.fixture
def port() -> int:
    """A free loopback port for a test server."""
    return free_port()


def _require(markers: tuple[str, ...], what: str, item: pytest.Item | None = None) -> None:
    """Fail ``item`` (default: the running test, if any) unless it carries one of ``markers``."""
    item = item or (_current[-1] if _current else None)
    if item is None or any(item.get_closest_marker(m) for m in markers):
        return
    names = " or ".join(f"@pytest.mark.{m}" for m in markers)
    pytest.fail(f"{item.nodeid} {what} but is not marked {names} (see tests/conftest.py)", pytrace=False)


def _guard(function: Callable[..., Any], check: Callable[..., None]) -> Callable[..., Any]:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        check(*args, **kwargs)
        return function(*args, **kwargs)

    return guarded


# A child that runs Python (a `halo` command or server, a fake upstream, pip): seconds to start on a loaded
# machine. Small tools (uname, bash -n, shellcheck) are not counted: they start in milliseconds.
_PYTHON_CHILD = re.compile(r"(^|[\s/])(halo|python[0-9.]*)(\s|$)")


def _check_popen(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
    command = args[0] if args else kwargs.get("args", ())
    argv = [command] if isinstance(command, (str, bytes, Path)) else list(command)
    line = " ".join(a.decode() if isinstance(a, bytes) else str(a) for a in argv)
    if sys.executable in line or _PYTHON_CHILD.search(line):
        _require(("process", "model"), f"starts a Python child process ({line[:80]})")


def _check_server(server: RemoteServer) -> None:
    fake = ("--engine" in server.args and "fake" in server.args) or server.env.get("HALO_ENGINE") == "fake"
    if server.command == "serve" and not fake:  # a halo serve that comes up has loaded a model
        _require(("model",), "starts `halo serve` with the llama.cpp engine")


def _check_load(*args: Any, **kwargs: Any) -> None:
    _require(("model",), "loads a model into llama.cpp")


def pytest_configure(config: pytest.Config) -> None:
    """Install the guards: around llama.cpp's model loading, `halo serve` and every child process."""
    RemoteServer.start = _guard(RemoteServer.start, _check_server)  # type: ignore[method-assign]
    llama_cpp.llama_model_load_from_file = _guard(llama_cpp.llama_model_load_from_file, _check_load)
    subprocess.Popen.__init__ = _guard(subprocess.Popen.__init__, _check_popen)  # type: ignore[method-assign]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    """Remember the running test for the guards (its fixtures' set-up and tear-down included)."""
    _current.append(item)
    try:
        yield
    finally:
        _current.pop()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test that takes ``model_path`` (directly or through its fixtures) must be marked ``model``."""
    if "model_path" in getattr(item, "fixturenames", ()):
        _require(("model",), "uses the model_path fixture", item)


def _slow_layer(item: pytest.Item) -> bool:
    return any(item.get_closest_marker(m) for m in ("model", "process", "slow"))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the fast layer first (a stable sort: each layer keeps pytest's order)."""
    items.sort(key=_slow_layer)
