"""Engine failures hit only their own request; /health reflects loading; SIGTERM drains."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from haloserve.config.serve import ServeSettings
from haloserve.engine.fake import FakeEngine
from haloserve.engine.llama_engine import LlamaEngine
from haloserve.engine.sampling import Sampler
from haloserve.server.app import create_app
from haloserve.testing.inproc import InProcessServer
from haloserve.testing.remote import RemoteServer

pytestmark = pytest.mark.model
POISON_SEED = 666


@pytest.fixture
def faulty_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: sampling raises for requests seeded with POISON_SEED, after two tokens."""
    real = Sampler.sample
    calls: dict[int, int] = {}

    def sample(self: Sampler, ctx, idx: int, n_generated: int) -> int:  # type: ignore[no-untyped-def]
        if self.seed == POISON_SEED:
            calls[id(self)] = calls.get(id(self), 0) + 1
            if calls[id(self)] > 2 or (n_generated == 0 and calls[id(self)] > 1):
                raise RuntimeError("injected sampling fault")
        return real(self, ctx, idx, n_generated)

    monkeypatch.setattr(Sampler, "sample", sample)


def test_engine_failure_fails_only_that_request(model_path: Path, faulty_sampler: None) -> None:
    settings = ServeSettings(parallel=2, ctx_size=2048, threads=2)
    app = create_app(settings, LlamaEngine(settings, model_path))
    with InProcessServer(app) as srv:
        base = srv.url + "/v1/completions"
        poisoned = {"prompt": "Hello", "max_tokens": 8, "seed": POISON_SEED, "temperature": 1.0}
        r = httpx.post(base, json=poisoned, timeout=60)
        assert r.status_code == 500
        err = r.json()["error"]
        assert err["code"] == "engine_error" and "injected sampling fault" in err["message"]
        # Streaming: two tokens go out, then exactly one error event, then the stream ends.
        with httpx.stream("POST", base, json={**poisoned, "stream": True}, timeout=60) as s:
            assert s.status_code == 200
            events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
        assert "[DONE]" not in events
        assert "error" in json.loads(events[-1]) and all("choices" in json.loads(e) for e in events[:-1])
        # The server keeps serving, in the same slots.
        ok = httpx.post(base, json={"prompt": "Hello", "max_tokens": 4}, timeout=60)
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 4


class SlowLoadingEngine(FakeEngine):
    """A fake engine whose start() blocks until released: makes 'still loading' observable."""

    def __init__(self, settings: ServeSettings) -> None:
        super().__init__(settings)
        self.release = threading.Event()

    def start(self) -> None:
        self.release.wait(30)
        super().start()


def test_health_is_503_while_loading_then_200() -> None:
    settings = ServeSettings(engine="fake")
    engine = SlowLoadingEngine(settings)
    with InProcessServer(create_app(settings, engine), wait_healthy=False) as srv:
        r = httpx.get(srv.url + "/health")
        assert r.status_code == 503 and r.json()["error"]["code"] == "service_unavailable"
        assert int(r.headers["retry-after"]) >= 1
        r = httpx.post(srv.url + "/v1/completions", json={"prompt": "x"})
        assert r.status_code == 503
        engine.release.set()
        deadline = time.monotonic() + 10
        while httpx.get(srv.url + "/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)


def test_sigterm_finishes_in_flight_requests_then_exits_cleanly() -> None:
    srv = RemoteServer(["--parallel", "2", "--ctx-size", "2048", "--shutdown-timeout", "90"]).start()
    result: dict[str, object] = {}

    flowing = threading.Event()

    def stream() -> None:
        body = {"prompt": "Once", "max_tokens": 40, "ignore_eos": True, "stream": True}
        events = result["events"] = []
        with httpx.stream("POST", srv.base_url + "/completions", json=body, timeout=60) as r:
            for ln in r.iter_lines():
                if ln.startswith("data: "):
                    events.append(ln)
                    flowing.set()

    t = threading.Thread(target=stream)
    t.start()
    assert flowing.wait(60)  # in flight (a fixed sleep raced the connection on a loaded machine)
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGTERM)
    t.join(60)
    events = result["events"]
    assert isinstance(events, list) and events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "length"
    assert srv.stop(timeout=30) == 0


def test_sigterm_ends_what_cannot_finish_in_time_with_an_error_event() -> None:
    srv = RemoteServer(["--parallel", "1", "--ctx-size", "2048", "--shutdown-timeout", "1"]).start()
    body = {"prompt": "Once", "max_tokens": 2000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", srv.base_url + "/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        next(lines)
        started = time.monotonic()
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)
        rest = [ln for ln in lines if ln.startswith("data: ")]  # the body ends properly: no HTTPError
    assert json.loads(rest[-1][6:])["error"]["type"] == "service_unavailable"
    assert srv.stop(timeout=30) == 0
    assert time.monotonic() - started < 15


def test_cors_is_off_by_default_and_allows_configured_origins() -> None:
    plain = ServeSettings(engine="fake")
    with InProcessServer(create_app(plain, FakeEngine(plain))) as srv:
        r = httpx.options(
            srv.url + "/v1/models",
            headers={"Origin": "https://ui.example", "Access-Control-Request-Method": "GET"},
        )
        assert "access-control-allow-origin" not in r.headers
    cors = ServeSettings(engine="fake", cors_origin=["https://ui.example"])
    with InProcessServer(create_app(cors, FakeEngine(cors))) as srv:
        r = httpx.options(
            srv.url + "/v1/chat/completions",
            headers={"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"},
        )
        assert r.headers["access-control-allow-origin"] == "https://ui.example"
        r = httpx.get(srv.url + "/v1/models", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
