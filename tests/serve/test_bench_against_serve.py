"""halo bench against a real halo serve: exact output lengths, usage-based counts, batching visible."""

from __future__ import annotations

import json

import pytest

from haloserve.cli import main
from haloserve.testing.remote import RemoteServer

pytestmark = pytest.mark.model


def test_bench_measures_the_real_server(server: RemoteServer, capsys: pytest.CaptureFixture[str]) -> None:
    before = server.metric('halo_requests_total{endpoint="chat",status="200"}', default=0)
    code = main(
        [
            "bench", "--url", server.url, "--concurrency", "1,4", "--num-prompts", "8", "--input-len", "32",
            "--output-len", "16", "--warmup", "1", "--no-progress", "--json",
            # greedy: a sampled token can carry no text (half a UTF-8 character, or a special token
            # picked instead of the banned end token), so the exact chunk count would depend on luck
            "--extra-body", '{"temperature": 0}',
        ]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    levels = json.loads(out)["levels"]
    assert [lv["label"] for lv in levels] == ["c=1", "c=4"]
    for lv in levels:
        m = lv["metrics"]
        assert (m["completed"], m["failed"]) == (8, 0)
        # ignore_eos/min_tokens reach the engine: every request generates exactly the asked length,
        # and the counts come from the server's usage, not from counting chunks.
        assert m["total_output_tokens"] == 8 * 16
        assert m["output_tokens_source"] == "usage" and m["input_tokens_source"] == "usage"
        assert 0 < m["ttft_ms"]["median"] < m["e2el_ms"]["median"]
        assert m["tpot_ms"]["median"] > 0 and m["itl_ms"]["count"] == 8 * 15
    assert levels[1]["metrics"]["peak_concurrency"] == 4
    # The server saw every request, warm-up included.
    assert server.metric('halo_requests_total{endpoint="chat",status="200"}') - before == 2 * (8 + 1)
