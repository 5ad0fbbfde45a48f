"""The serving layer without a model: metrics counted once per request, engine failures mapped in one
place (an HTTP error before the response starts, one SSE error event after), no import cycles."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import haloserve.server
from haloserve.config.serve import ServeSettings
from haloserve.engine.base import GenerationRequest, Output
from haloserve.engine.bridge import RequestStream, StreamCancelled
from haloserve.engine.fake import FakeEngine
from haloserve.errors import QueueFullError
from haloserve.server.app import create_app
from haloserve.server.metrics import ServerMetrics
from haloserve.testing.inproc import InProcessServer


def _metrics() -> ServerMetrics:
    return ServerMetrics(lambda: FakeEngine(ServeSettings(engine="fake")).stats(), lambda: None)


def _count(m: ServerMetrics, status: str) -> float:
    value = m.registry.get_sample_value("halo_requests_total", {"endpoint": "chat", "status": status})
    return value or 0.0


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (None, "499"),  # left the block with neither ok() nor an error: the client went away
        (QueueFullError("busy"), "429"),
        (StreamCancelled(), "499"),
        (asyncio.CancelledError(), "499"),
        (GeneratorExit(), "499"),
        (RuntimeError("a bug"), "500"),
    ],
)
def test_a_request_that_fails_is_counted_once_with_its_status(
    error: BaseException | None, status: str
) -> None:
    m = _metrics()
    rec = m.record("chat", 0.0)
    with pytest.raises(type(error)) if error is not None else contextlib.nullcontext(), rec:
        if error is not None:
            raise error
    rec.failed(503)  # a later outcome never counts again
    rec.ok(Output(finish_reason="stop"))
    assert _count(m, status) == 1
    assert sum(_count(m, s) for s in ("200", "429", "499", "500", "503")) == 1


def test_a_success_counts_its_tokens_once_and_a_handed_over_record_counts_where_it_ends() -> None:
    m = _metrics()
    rec = m.record("chat", 0.0)
    with rec:
        rec.saw(Output(text="a", completion_tokens=1))
        rec.hand_over()  # a stream: the generator that writes it counts the outcome
    assert _count(m, "499") == 0 and _count(m, "200") == 0
    with rec:
        rec.saw(Output(text="b", completion_tokens=2))
        rec.ok(Output(finish_reason="stop", prompt_tokens=5, completion_tokens=2))
    assert _count(m, "200") == 1 and _count(m, "499") == 0
    assert m.registry.get_sample_value("halo_prompt_tokens_total") == 5
    assert m.registry.get_sample_value("halo_generation_tokens_total") == 2
    assert m.registry.get_sample_value("halo_time_to_first_token_seconds_count") == 1
    assert m.registry.get_sample_value("halo_time_per_output_token_seconds_count") == 1


class FailingEngine(FakeEngine):
    """The fake engine, whose request fails in-band after two outputs, as a failing engine reports it:
    a final output with ``finish_reason="error"`` (and ``error_param`` when the request caused it)."""

    def __init__(self, settings: ServeSettings, error_param: str | None = None) -> None:
        super().__init__(settings)
        self.error_param = error_param

    def generate(self, request: GenerationRequest) -> RequestStream:
        inner = super().generate(request)
        outer = RequestStream(asyncio.get_running_loop(), lambda s: inner.cancel())

        async def relay() -> None:
            n = 0
            async for out in inner:
                n += 1
                if n == 3:
                    outer.put(Output(finish_reason="error", error="injected", error_param=self.error_param))
                    inner.cancel()
                    return
                outer.put(out)

        outer.job = asyncio.get_running_loop().create_task(relay())
        return outer


@pytest.fixture(params=[None, "response_format"], ids=["engine-fault", "request-fault"])
def failing(request: pytest.FixtureRequest) -> Iterator[tuple[InProcessServer, str | None]]:
    settings = ServeSettings(engine="fake", fake_ttft=0.0, fake_itl=0.0)
    with InProcessServer(create_app(settings, FailingEngine(settings, request.param))) as srv:
        yield srv, request.param


def test_an_in_band_engine_failure_is_one_error_body_or_one_error_event(
    failing: tuple[InProcessServer, str | None],
) -> None:
    srv, param = failing
    status = 400 if param else 500
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
    r = httpx.post(srv.url + "/v1/chat/completions", json=chat, timeout=30)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["message"] == "injected" and err["param"] == param
    assert err["code"] == (None if param else "engine_error")
    with httpx.stream(
        "POST", srv.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 16, "stream": True}
    ) as s:
        assert s.status_code == 200
        events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
    assert "[DONE]" not in events and len(events) == 3  # two outputs, then the one error event
    assert json.loads(events[-1])["error"]["message"] == "injected"
    assert all("choices" in json.loads(e) for e in events[:-1])
    text = httpx.get(srv.url + "/metrics", timeout=10).text
    assert f'halo_requests_total{{endpoint="chat",status="{status}"}} 1.0' in text
    assert f'halo_requests_total{{endpoint="completions",status="{status}"}} 1.0' in text
    assert 'status="200"' not in text and 'status="499"' not in text


def _server_imports() -> dict[str, set[str]]:
    """Module -> the ``haloserve.server`` modules it imports, anywhere in its body."""
    root = Path(haloserve.server.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root.parent.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_the_server_package_has_no_import_cycles() -> None:
    graph = _server_imports()
    assert "haloserve.server.openai_routes" in graph["haloserve.server.app"]
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join((*path[path.index(module) :], module)))
        if module in done:
            return
        for dep in sorted(graph[module]):
            visit(dep, (*path, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())
