"""The halo bench command: tables, reports, plots, compare, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from haloserve.bench.report import load_result
from haloserve.bench.schema import BenchResult
from haloserve.cli import main
from haloserve.testing.upstream import FakeUpstream

SMALL = ["--input-len", "8", "--output-len", "4", "--warmup", "0", "--no-progress"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["bench", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_table_reports_and_plots(
    upstream: FakeUpstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "run"
    code, out, err = run(
        capsys,
        "--url",
        upstream.url,
        "--concurrency",
        "1,4",
        "--num-prompts",
        "8",
        "--slo",
        "ttft=1s",
        "--output",
        str(out_dir),
        *SMALL,
    )
    assert code == 0, err
    assert (
        "halo bench: fake-model @ 127.0.0.1" in out and "c=4" in out and "TTFT" in out and "p50 / p99" in out
    )
    assert "counted from the server's usage" in out
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["cdf.png", "latency.png", "results.json", "summary.md", "throughput.png"]
    for png in out_dir.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    result = load_result(out_dir / "results.json")
    assert [lv.label for lv in result.levels] == ["c=1", "c=4"]
    assert len(result.levels[1].requests) == 8 and result.settings["api_key"] is None
    summary = (out_dir / "summary.md").read_text()
    assert "| level | ok | failed |" in summary and "![throughput](throughput.png)" in summary


def test_json_output_and_secret_masking(upstream: FakeUpstream, capsys: pytest.CaptureFixture[str]) -> None:
    upstream.configure(api_key="k-123")
    code, out, _ = run(
        capsys,
        "--url",
        upstream.url + "/v1",
        "--concurrency",
        "2",
        "--num-prompts",
        "2",
        "--api-key",
        "k-123",
        "--json",
        *SMALL,
    )
    assert code == 0
    data = json.loads(out)
    assert data["settings"]["api_key"] == "***" and "k-123" not in out
    assert "requests" not in data["levels"][0] and data["levels"][0]["metrics"]["completed"] == 2
    assert data["settings"]["url"] == upstream.url  # a trailing /v1 is accepted


def test_results_schema_is_versioned_and_validated(
    upstream: FakeUpstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        run(
            capsys,
            "--url",
            upstream.url,
            "--concurrency",
            "1",
            "--num-prompts",
            "2",
            "--output",
            str(tmp_path),
            "--no-plots",
            *SMALL,
        )[0]
        == 0
    )
    data = json.loads((tmp_path / "results.json").read_text())
    assert (data["schema"], data["schema_version"]) == ("haloserve.bench", 1)
    BenchResult.model_validate(data)
    schema = BenchResult.model_json_schema(by_alias=True)
    assert "levels" in schema["required"] and "RequestRecord" in schema["$defs"]
    for broken, message in (
        ({**data, "schema_version": 99}, "schema version 99 is not supported"),
        ({**data, "levels": [{"mode": "x"}]}, "invalid results file at levels.0"),
        ({"hello": 1}, "not a halo bench results file"),
    ):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(broken))
        code, _, err = run(capsys, "compare", str(bad), str(tmp_path / "results.json"))
        assert code == 2 and message in err and err.count("\n") == 1


@pytest.mark.slow
def test_compare_prints_ratios_and_plots_runs_together(
    upstream: FakeUpstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, itl in (("fast", 0), ("slow", 20)):
        upstream.configure(itl_ms=itl)
        assert (
            run(
                capsys,
                "--url",
                upstream.url,
                "--concurrency",
                "1,2",
                "--num-prompts",
                "4",
                "--label",
                name,
                "--output",
                str(tmp_path / name),
                "--no-plots",
                *SMALL,
            )[0]
            == 0
        )
    a, b = str(tmp_path / "fast" / "results.json"), str(tmp_path / "slow" / "results.json")
    code, out, err = run(capsys, "compare", a, b, "--output", str(tmp_path / "cmp"))
    assert code == 0, err
    assert "fast" in out and "slow" in out and "ratio" in out and "TPOT p50 ms" in out
    assert sorted(p.name for p in (tmp_path / "cmp").iterdir()) == [
        "compare.md",
        "compare_cdf.png",
        "compare_latency.png",
        "compare_throughput.png",
    ]
    code, out, _ = run(capsys, "compare", a, b, "--json")
    rows = json.loads(out)["rows"]
    tpot = next(r for r in rows if r["level"] == "c=1" and r["metric"] == "E2E p50 ms")
    assert tpot["ratios"][1] > 5  # 3 x 20 ms against next to nothing
    assert run(capsys, "compare", a)[0] == 2


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--concurrency", "0"], "--concurrency"),
        (["--slo", "ttft=fast"], "--slo"),
        (["--rate", "1", "--concurrency", "2"], "use --concurrency alone"),
        (["--max-concurrency", "4"], "applies to --rate"),
        (["--workload", "file"], "needs --dataset"),
        (["--url", "ftp://x"], "--url"),
        (["--extra-body", "[1]"], "--extra-body"),
        (["--frobnicate"], "unrecognized arguments"),
        (["--dataset", "/nonexistent.jsonl", "--no-preflight", "--model", "m"], "file not found"),
    ],
)
def test_bad_flags_are_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    code, _out, err = run(capsys, *argv)
    assert code == 2 and needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_unreachable_url_and_refused_key_fail_fast(
    upstream: FakeUpstream, capsys: pytest.CaptureFixture[str]
) -> None:
    from haloserve.testing.remote import free_port

    code, _, err = run(capsys, "--url", f"http://127.0.0.1:{free_port()}", *SMALL)
    assert code == 1 and "cannot connect to http://127.0.0.1:" in err and err.count("\n") == 1
    upstream.configure(api_key="right")
    code, _, err = run(capsys, "--url", upstream.url, "--api-key", "wrong", *SMALL)
    assert code == 1 and "refused the request (HTTP 401: invalid or missing API key)" in err


def test_every_request_failing_is_one_line_and_non_zero(
    upstream: FakeUpstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys,
        "--url",
        upstream.url,
        "--model",
        "wrong",
        "--concurrency",
        "2",
        "--num-prompts",
        "4",
        "--output",
        str(tmp_path),
        "--no-plots",
        *SMALL,
    )
    assert code == 1
    assert "note: model 'wrong' is not listed" in err
    assert "every request failed (4 requests; mostly http): HTTP 404: the model 'wrong' does not exist" in err
    assert "http 4" in out  # the table and error lines still show, and results were written
    assert load_result(tmp_path / "results.json").levels[0].metrics.http_statuses == {"404": 4}


def test_progress_bar_shows_running_throughput(upstream: FakeUpstream) -> None:
    import io

    from rich.console import Console

    from haloserve.bench.preflight import run_sync
    from haloserve.bench.runner import Runner
    from haloserve.cli.bench import RichProgress
    from haloserve.config.bench import BenchSettings

    buf = io.StringIO()
    sink = RichProgress(Console(file=buf, force_terminal=True, width=120))
    settings = BenchSettings(
        url=upstream.url, concurrency=[2], num_prompts=6, input_len=4, output_len=4, warmup=0
    )
    with sink.progress:
        run_sync(Runner(settings, sink).run())
    text = buf.getvalue()
    assert "c=2" in text and "6/6" in text and "tok/s" in text
