"""The wire pieces server and gateway share: error bodies, the stream's error event, model cards."""

from __future__ import annotations

import json

import pytest

from haloserve.errors import HaloError, InvalidRequestError, ModelNotFoundError, error_body
from haloserve.protocol import sse
from haloserve.protocol.errors import body_json, error_event, error_json
from haloserve.protocol.models import find_card, model_card, model_list


def test_error_json_is_the_openai_shape_and_always_encodes() -> None:
    exc = InvalidRequestError("model `\ud800x` is bad", param="model", code="bad_model")
    raw = error_json(exc)  # a lone surrogate echoed from a request must not make the error fail
    assert raw.isascii()
    assert json.loads(raw) == {
        "error": {
            "message": "model `\ud800x` is bad",
            "type": "invalid_request_error",
            "param": "model",
            "code": "bad_model",
        }
    }
    assert body_json(error_body("m", "server_error")) == error_json(HaloError("m"))


def test_error_event_is_one_sse_event_carrying_the_error_body() -> None:
    exc = HaloError("backend failed mid-stream: é\ud800")
    raw = error_event(exc)
    assert raw.isascii() and raw.endswith(b"\n\n") and raw.count(b"\n\n") == 1
    events = sse.Decoder().feed(raw)
    assert len(events) == 1 and events[0].json() == json.loads(error_json(exc))


def test_model_cards_list_and_lookup() -> None:
    cards = [model_card("a"), model_card("b", meta={"n_ctx": 8})]
    assert cards[0] == {"id": "a", "object": "model", "created": cards[0]["created"], "owned_by": "haloserve"}
    assert cards[1]["meta"] == {"n_ctx": 8} and "meta" not in cards[0]
    assert model_list(cards) == {"object": "list", "data": cards}
    assert find_card(cards, "b") is cards[1]
    with pytest.raises(ModelNotFoundError) as nf:
        find_card(cards, "c")
    assert nf.value.status == 404 and nf.value.param == "model" and "`c`" in nf.value.message
