"""The web UI against a real `halo serve` with the bundled model, in headless chromium: the playground
streams a reply, the stop button frees the slot (seen in /metrics), the status page's charts move.
The server has an API key: the UI's calls are judged like any API call."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from haloserve.testing.remote import RemoteServer
from tests.ui.conftest import metric, paste_key, wait_js

pytestmark = pytest.mark.model

KEY = "ui-test-key"
# Polls the reply while it streams and returns the text lengths seen (run inside the page).
WATCH_STREAM = """async () => {
  const seen = [];
  for (let i = 0; i < 2400; i++) {
    const box = [...document.querySelectorAll('.msg.assistant')].pop();
    if (box) {
      const n = box.querySelector('.body').textContent.length;
      if (box.dataset.state !== 'streaming') return {seen, state: box.dataset.state};
      if (n && seen[seen.length - 1] !== n) seen.push(n);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {seen, state: 'timeout'};
}"""


@pytest.fixture(scope="module")
def server(model_path: Path) -> Iterator[RemoteServer]:
    """The bundled model, 2 slots, with an API key."""
    args = ["--model", str(model_path), "--parallel", "2", "--ctx-size", "4096", "--threads", "2"]
    with RemoteServer([*args, "--api-key", KEY], api_key=KEY) as srv:
        yield srv


def _open(open_page: Any, server: RemoteServer, hash_: str = "") -> Any:
    page = open_page(server.url)
    page.page.goto("/" + hash_, wait_until="load")  # a browser on / lands on /ui/
    page.page.wait_for_selector("body[data-ready='1']")
    assert page.page.url.startswith(server.url + "/ui/")
    return page


def test_playground_streams_a_reply_with_the_pasted_key(open_page: Any, server: RemoteServer) -> None:
    ui = _open(open_page, server)
    p = ui.page
    wait_js(p, "document.getElementById('pg-error').textContent.includes('401')")
    paste_key(p, "#api-key", KEY)
    wait_js(p, "document.querySelectorAll('#pg-model option').length > 0")
    p.fill("#pg-system", "You are a helpful assistant. Answer in Markdown.")
    p.fill("#pg-temp", "0")
    p.fill("#pg-max", "32")
    p.fill("#pg-input", "Give me three tips for a good night's sleep as a list.")
    p.click("#pg-send")
    result = p.evaluate(WATCH_STREAM)
    assert result["state"] == "done", result
    assert len(result["seen"]) >= 2, result  # the text grew while streaming, not in one piece
    reply = p.locator(".msg.assistant").last
    assert reply.locator(".body").inner_text().strip()
    meta = reply.locator(".meta").inner_text()
    assert "TTFT" in meta and "tokens/s" in meta and "tokens" in meta
    # the conversation lives in this tab only: sessionStorage, never localStorage
    assert p.evaluate("window.localStorage.length") == 0
    assert "night" in p.evaluate("window.sessionStorage.getItem('halo.chat')")
    ui.screenshot("playground")
    assert ui.errors == []


def test_stop_cancels_the_generation_and_frees_the_slot(open_page: Any, server: RemoteServer) -> None:
    ui = _open(open_page, server)
    p = ui.page
    paste_key(p, "#api-key", KEY)
    wait_js(p, "document.querySelectorAll('#pg-model option').length > 0")
    p.fill("#pg-max", "1500")
    p.fill("#pg-extra", '{"ignore_eos": true}')  # a long answer whatever the model prefers
    cancelled = metric(server.url, 'halo_requests_total{status="499"', KEY)
    p.fill("#pg-input", "Count from one to one thousand in words.")
    p.click("#pg-send")
    wait_js(p, "[...document.querySelectorAll('.msg.assistant .body')].pop()?.textContent.length > 20")
    assert metric(server.url, "halo_slots_busy", KEY) == 1
    p.click("#pg-stop")
    p.wait_for_selector(".msg.assistant[data-state='stopped']")
    deadline = time.monotonic() + 30
    while metric(server.url, "halo_slots_busy", KEY) != 0:  # the server noticed the disconnect
        assert time.monotonic() < deadline, "the slot stayed busy after the stop button"
        time.sleep(0.1)
    assert metric(server.url, 'halo_requests_total{status="499"', KEY) == cancelled + 1
    assert "stopped" in p.locator(".msg.assistant .meta").last.inner_text()
    assert p.is_disabled("#pg-stop") and not p.is_disabled("#pg-send")
    assert ui.errors == []


def test_status_page_shows_the_node_and_its_charts_move(open_page: Any, server: RemoteServer) -> None:
    ui = _open(open_page, server, "#status")
    p = ui.page
    paste_key(p, "#api-key", KEY)
    p.wait_for_selector("#st-models td")
    assert "loaded" in p.locator("#st-models").inner_text()
    assert p.locator("#st-models button").count() == 0  # one model, no load/unload to offer
    client = server.client()
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            client.chat.completions.create(
                model="", messages=[{"role": "user", "content": "Say hello."}], max_tokens=24
            )

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        # three scrapes two seconds apart give two points; tokens were generated between them
        wait_js(
            p,
            "Number(document.getElementById('st-c1').dataset.points) >= 3"
            " && Number(document.getElementById('st-c1').dataset.last) > 0"
            " && Number(document.getElementById('st-c3').dataset.last) > 0",
        )
    finally:
        stop.set()
        worker.join(60)
    assert metric(server.url, "halo_kv_cache_capacity_tokens", KEY) == 4096
    assert 0 < metric(server.url, "halo_kv_cache_tokens", KEY) <= 4096  # the slots hold the chats
    tiles = p.locator("#st-tiles").inner_text()
    assert "/ 2" in tiles and "KV cache" in tiles and "prefix hits" in tiles
    ui.screenshot("status")
    assert ui.errors == []


def test_json_schema_and_tools_switches(open_page: Any, server: RemoteServer) -> None:
    ui = _open(open_page, server)
    p = ui.page
    paste_key(p, "#api-key", KEY)
    wait_js(p, "document.querySelectorAll('#pg-model option').length > 0")
    sent: list[dict[str, Any]] = []
    p.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/chat/completions") else None)
    p.check("#pg-json")
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    p.fill("#pg-schema", json.dumps({**schema, "additionalProperties": False}))
    p.fill("#pg-max", "24")
    p.fill("#pg-input", "Is water wet? Answer in JSON.")
    p.click("#pg-send")
    p.wait_for_selector(".msg.assistant[data-state='done']")
    reply = json.loads(p.locator(".msg.assistant .body").last.inner_text())
    assert isinstance(reply["ok"], bool)  # the server enforced the schema the page sent
    p.uncheck("#pg-json")
    p.check("#pg-tools")
    p.fill("#pg-max", "8")
    p.fill("#pg-input", "What is the weather in Paris?")
    p.click("#pg-send")
    p.wait_for_selector(".msg.assistant:nth-of-type(4)[data-state='done']")
    assert sent[0]["response_format"]["type"] == "json_schema" and "tools" not in sent[0]
    assert sent[1]["tools"][0]["function"]["name"] == "get_weather" and "response_format" not in sent[1]
    assert [m["role"] for m in sent[1]["messages"]] == ["user", "assistant", "user"]
    assert ui.errors == []
