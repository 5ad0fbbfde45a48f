"""Fuzz every operation of /openapi.json (schemathesis): never a 5xx, never a hang, errors in OpenAI shape."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from haloserve.testing.remote import RemoteServer

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[RemoteServer]:
    """Small slots and --n-predict 24 so that any generation the fuzzer asks for ends quickly."""
    with RemoteServer(["--parallel", "2", "--ctx-size", "512", "--n-predict", "24", "--threads", "2"]) as srv:
        yield srv


@pytest.fixture(scope="module")
def api_schema(fuzz_server: RemoteServer):  # type: ignore[no-untyped-def]
    return schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")


def test_no_server_errors_and_openai_error_shape(api_schema) -> None:  # type: ignore[no-untyped-def]
    """Every operation, many generated bodies each (schemathesis' strategies driven by hypothesis)."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert any(op.path == "/v1/chat/completions" for op in operations)
    for op in operations:

        @given(case=op.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case) -> None:  # type: ignore[no-untyped-def]
            response = case.call(timeout=60)
            assert response.status_code < 500, (case.path, case.body, response.text[:500])
            header = response.headers.get("content-type") or ""
            ctype = header[0] if isinstance(header, list) else header
            if response.status_code >= 400 and ctype.startswith("application/json"):
                err = response.json()["error"]
                assert set(err) == {"message", "type", "param", "code"} and err["message"]

        check()


def test_n_predict_caps_generation(fuzz_server: RemoteServer) -> None:
    client = fuzz_server.client()
    r = client.completions.create(model="", prompt="Once", max_tokens=200, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 24 and r.choices[0].finish_reason == "length"
