"""Shared fixtures: the bundled model and free loopback ports."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from haloserve.bundled import bundled_model_path


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The bundled SmolLM2-135M-Instruct GGUF (installed by `make test`)."""
    return bundled_model_path()


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def port() -> int:
    """A free loopback port for a test server."""
    return free_port()
