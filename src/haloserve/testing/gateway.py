"""Run a gateway for tests and benchmarks: in a thread of this process, or as a real ``halo gateway``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from haloserve.config.gateway import GatewaySettings
from haloserve.gateway.app import Gateway
from haloserve.testing.remote import RemoteServer
from haloserve.testing.upstream import new_event_loop

T = TypeVar("T")


class ThreadedGateway:
    """A :class:`Gateway` on its own event loop in a daemon thread; ``call`` runs code on that loop."""

    def __init__(self, gw: Gateway, loop: asyncio.AbstractEventLoop) -> None:
        self.gateway = gw
        self.loop = loop

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return self.gateway.url

    @property
    def base_url(self) -> str:
        """The OpenAI base URL."""
        return self.url + "/v1"

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on the gateway's loop (state is not thread-safe) and return its result."""

        async def wrapped() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(10)

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        """Await a coroutine on the gateway's loop."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def client(self, api_key: str = "none", **kw: Any) -> Any:
        """An official ``openai.OpenAI`` client for this gateway."""
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, **kw)


@contextmanager
def gateway_in_thread(settings: GatewaySettings, **kw: Any) -> Iterator[ThreadedGateway]:
    """Start a gateway (port 0 picks a free one) and stop it, drained, on exit."""
    loop = new_event_loop()
    started = threading.Event()
    holder: list[Any] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            gw = loop.run_until_complete(Gateway(settings, **kw).start())
            holder.append(gw)
        except BaseException as exc:  # reported to the caller
            holder.append(exc)
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="gateway", daemon=True)
    thread.start()
    started.wait(60)
    if not holder or isinstance(holder[0], BaseException):
        raise holder[0] if holder else TimeoutError("gateway did not start")
    tg = ThreadedGateway(holder[0], loop)
    try:
        yield tg
    finally:
        tg.run(tg.gateway.drain(timeout=5.0))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def gateway_process(args: list[str], **kw: Any) -> RemoteServer:
    """A real ``halo gateway`` child process (not started); ready when its /ready answers 200."""
    return RemoteServer(args, command="gateway", health_path="/ready", **kw)
