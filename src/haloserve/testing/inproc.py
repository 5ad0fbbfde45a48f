"""Run an ASGI app on a real loopback socket inside this process (uvicorn in a thread).

For tests that need the real HTTP stack and lifespan but also need to reach into the app (fault
injection, a slow-loading engine); everything else should use :class:`~haloserve.testing.remote.RemoteServer`.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import uvicorn

from haloserve.testing.remote import free_port


class InProcessServer:
    """``with InProcessServer(app) as srv:`` serves ``app`` on ``srv.url`` until the block ends."""

    def __init__(
        self, app: Any, *, port: int | None = None, wait_healthy: bool = True, timeout: float = 60.0
    ) -> None:
        self.app = app
        self.port = port or free_port()
        self.wait_healthy = wait_healthy
        self.timeout = timeout
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="inproc-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> InProcessServer:
        self.thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("in-process server did not start")
            time.sleep(0.02)
        while self.wait_healthy:
            if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                break
            if time.monotonic() > deadline:
                raise TimeoutError("in-process server never became healthy")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(self.timeout)
