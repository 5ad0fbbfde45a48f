"""SIGTERM on a many-models `halo serve` (fake engines): each model's running stream gets its proper end,
new requests get 503, and the process exits 0."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import httpx
import pytest

from haloserve.bundled import bundled_model_path
from haloserve.testing.remote import RemoteServer

pytestmark = pytest.mark.process


def test_sigterm_ends_the_streams_of_every_model(tmp_path: Path) -> None:
    for name in ("a", "b"):
        os.symlink(bundled_model_path(), tmp_path / f"{name}.gguf")
    args = ["--engine", "fake", "--models-dir", str(tmp_path), "--memory-budget", "4G"]
    srv = RemoteServer([*args, "--fake-itl", "0.02", "--shutdown-timeout", "1"])
    srv.start()
    ends: dict[str, list[str]] = {"a": [], "b": []}
    flowing = threading.Barrier(3, timeout=60)

    def stream(model: str) -> None:
        body = {"model": model, "prompt": "x", "max_tokens": 3000, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            for i, line in enumerate(r.iter_lines()):  # raises if the body is cut without its end
                if i == 3:
                    flowing.wait()
                if line.startswith("data: "):
                    ends[model].append(line[6:])

    try:
        runners = [threading.Thread(target=stream, args=(m,)) for m in ("a", "b")]
        for t in runners:
            t.start()
        flowing.wait()
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)
        for t in runners:
            t.join(60)
        assert srv.proc.wait(60) == 0
    finally:
        srv.stop()
    for model in ("a", "b"):
        last = json.loads(ends[model][-1])
        assert last["error"]["code"] == "service_unavailable", (model, ends[model][-3:])
