"""Start a real ``halo`` server process on a free loopback port (tests and benchmarks).

Modelled on vLLM's ``RemoteOpenAIServer``: it runs the real command line in a subprocess, waits for
``/health`` to answer 200, hands out an official ``openai`` client, and stops the process with SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RemoteServer:
    """``python -m haloserve <command> ... --port N`` as a context manager."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        command: str = "serve",
        env: dict[str, str] | None = None,
        port: int | None = None,
        api_key: str | None = None,
        ready_timeout: float = 120.0,
        health_path: str = "/health",
        nofile: tuple[int, int] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.command = command
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.api_key = api_key
        self.ready_timeout = ready_timeout
        self.health_path = health_path
        self.nofile = nofile  # (soft, hard) RLIMIT_NOFILE of the child, e.g. to test descriptor exhaustion
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="halo-server-", suffix=".log", delete=False)  # noqa: SIM115
        self.log_path = Path(self._log.name)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, ``.../v1``."""
        return self.url + "/v1"

    def start(self) -> RemoteServer:
        """Start the process and wait until it is healthy (raises with the log tail if it dies)."""
        cmd = [sys.executable, "-m", "haloserve", self.command, "--port", str(self.port), *self.args]
        limit = self._limit if self.nofile else None
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, preexec_fn=limit
        )
        self.wait_ready()
        return self

    def _limit(self) -> None:
        if self.nofile is not None:  # runs in the child, before exec
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, self.nofile)

    def wait_ready(self) -> None:
        """Poll the health endpoint until it answers 200."""
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + self.health_path, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {self.ready_timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the server printed."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def metric(self, name: str, default: float | None = None) -> float:
        """The value of one sample on ``/metrics`` (``name`` may include its labels).

        A sample that is not there yet is ``default``, or an AssertionError without one.
        """
        text = httpx.get(self.url + "/metrics", timeout=10).text
        m = re.search(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.e+-]+)$", text, re.M)
        if not m:
            if default is not None:
                return default
            raise AssertionError(f"{name} not in /metrics")
        return float(m.group(1))

    def client(self, **kw: Any) -> Any:
        """An official ``openai.OpenAI`` client for this server."""
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key=self.api_key or "none", max_retries=0, **kw)

    def async_client(self, **kw: Any) -> Any:
        """An official ``openai.AsyncOpenAI`` client for this server."""
        import openai

        return openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key or "none", max_retries=0, **kw)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the process and wait for it; kills it after ``timeout``. Returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)

    def __enter__(self) -> RemoteServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            self.log_path.unlink()
