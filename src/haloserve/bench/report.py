"""Reports of a run: the rows people read, ``summary.md``, ``results.json``, and loading results back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from haloserve.bench.schema import SCHEMA_NAME, SCHEMA_VERSION, BenchResult, LevelResult
from haloserve.errors import CommandError, ConfigError

COLUMNS = (
    "level",
    "ok",
    "failed",
    "req/s",
    "out tok/s",
    "goodput",
    "TTFT p50",
    "TTFT p99",
    "TPOT p50",
    "TPOT p99",
    "ITL p50",
    "ITL p99",
    "E2E p50",
    "E2E p99",
)


def _ms(v: float) -> str:
    return f"{v:.1f}" if v < 1000 else f"{v:,.0f}"


def level_row(level: LevelResult) -> list[str]:
    """One table row of a level, in :data:`COLUMNS` order (latencies in ms)."""
    m = level.metrics
    goodput = "-" if m.request_goodput is None else f"{m.request_goodput:.2f}"
    return [
        level.label,
        str(m.completed),
        str(m.failed),
        f"{m.request_throughput:.2f}",
        f"{m.output_throughput:,.1f}",
        goodput,
        _ms(m.ttft_ms.median),
        _ms(m.ttft_ms.p99),
        _ms(m.tpot_ms.median),
        _ms(m.tpot_ms.p99),
        _ms(m.itl_ms.median),
        _ms(m.itl_ms.p99),
        _ms(m.e2el_ms.median),
        _ms(m.e2el_ms.p99),
    ]


def token_sources(result: BenchResult) -> str:
    """One sentence saying where token counts came from."""
    outs = {lv.metrics.output_tokens_source for lv in result.levels} - {"none"}
    ins = {lv.metrics.input_tokens_source for lv in result.levels} - {"none"}
    out = {
        "usage": "the server's usage",
        "chunks": "counting stream chunks (no usage from the server)",
        "mixed": "the server's usage where given, else counting stream chunks",
    }
    inp = {
        "usage": "the server's usage",
        "estimate": "an estimate (whitespace words; no usage from the server)",
        "mixed": "the server's usage where given, else an estimate (whitespace words)",
    }
    o = out.get(outs.pop() if len(outs) == 1 else "mixed", "nothing (no request succeeded)") if outs else "-"
    i = inp.get(ins.pop() if len(ins) == 1 else "mixed", "-") if ins else "-"
    return f"Output tokens counted from {o}; input tokens from {i}."


def error_lines(result: BenchResult) -> list[str]:
    """One line per level that had failures: counts by kind and a sample message."""
    lines = []
    for lv in result.levels:
        m = lv.metrics
        if m.failed:
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(m.errors.items()))
            statuses = ", ".join(f"HTTP {s}: {n}" for s, n in sorted(m.http_statuses.items()))
            extra = f" ({statuses})" if statuses else ""
            lines.append(f"{lv.label}: {m.failed} failed: {kinds}{extra}; e.g. {m.first_error}")
    return lines


def failure_reason(result: BenchResult) -> str | None:
    """Why the run measured nothing, in one line; None when some request succeeded."""
    levels = result.levels
    if not levels or any(lv.metrics.completed for lv in levels):
        return None
    failed = sum(lv.metrics.failed for lv in levels)
    if failed == 0:
        return "no request was sent (check --num-prompts and --duration)"
    kinds: dict[str, int] = {}
    for lv in levels:
        for k, n in lv.metrics.errors.items():
            kinds[k] = kinds.get(k, 0) + n
    top = max(kinds, key=lambda k: kinds[k])
    sample = next(lv.metrics.first_error for lv in levels if lv.metrics.first_error)
    return f"every request failed ({failed} requests; mostly {top}): {sample}"


def summary_markdown(result: BenchResult, plots: list[str] | None = None) -> str:
    """The ``summary.md`` of a run."""
    s: dict[str, Any] = result.settings
    env = result.environment
    server = env.server
    out = [f"# halo bench: {result.label}", ""]
    out.append(
        f"- **Target**: {server.url}, model `{server.model}`"
        + (f" ({server.server_header})" if server.server_header else "")
    )
    workload = s.get("workload")
    out.append(
        f"- **Workload**: {workload}, {s.get('endpoint')} endpoint, input {s.get('input_len')} words, "
        f"output {s.get('output_len') or 'default'} tokens ({s.get('length_dist')}), "
        f"ignore_eos {s.get('ignore_eos')}"
    )
    first = result.levels[0] if result.levels else None
    if first is not None and first.mode == "rate":
        out.append(
            f"- **Load**: arrival rate, burstiness {first.burstiness}, "
            f"max concurrency {first.max_concurrency}"
        )
    out.append(
        f"- **Per level**: {s.get('num_prompts') or 'default'} requests, "
        f"duration {s.get('duration') or '-'}, "
        f"{s.get('warmup')} warm-up requests excluded" + (f", SLO {s.get('slo')}" if s.get("slo") else "")
    )
    out.append(
        f"- **Client**: {env.cpu} ({env.cpu_count} CPUs), Python {env.python}, {env.event_loop}, "
        f"halo {env.halo_version}, {env.started_at}"
    )
    out.append(f"- **Tokens**: {token_sources(result)}")
    out += ["", "Latencies in milliseconds; metrics as defined by vLLM's `vllm bench serve`.", ""]
    out.append("| " + " | ".join(COLUMNS) + " |")
    out.append("|" + "---|" * len(COLUMNS))
    for lv in result.levels:
        out.append("| " + " | ".join(level_row(lv)) + " |")
    errors = error_lines(result)
    if errors or result.notes:
        out += ["", "## Errors and notes", ""]
        out += [f"- {line}" for line in [*result.notes, *errors]]
    if plots:
        out += ["", "## Plots", ""]
        out += [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(out) + "\n"


def write_reports(result: BenchResult, out_dir: Path, plots: bool = True) -> list[Path]:
    """Write ``results.json``, the plots (when asked and matplotlib is there) and ``summary.md``."""
    from haloserve.bench.plots import plots_available, write_plots

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        written = [out_dir / "results.json"]
        written[0].write_text(json.dumps(result.to_json_dict(), indent=1) + "\n", encoding="utf-8")
        pngs: list[Path] = []
        if plots and plots_available():
            pngs = write_plots([result], out_dir)
        elif plots:
            result.notes.append("plots skipped: matplotlib is not installed (pip install 'haloserve[bench]')")
        summary = out_dir / "summary.md"
        summary.write_text(summary_markdown(result, [p.name for p in pngs]), encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot write reports into {out_dir}: {exc.strerror or exc}") from None
    return [*written, *pngs, summary]


def load_result(path: Path) -> BenchResult:
    """Read and validate a ``results.json``; raises ConfigError naming the file and the problem."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA_NAME:
        raise ConfigError(f"{path}: not a halo bench results file")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ConfigError(
            f"{path}: results schema version {data.get('schema_version')} is not supported "
            f"(this halo reads version {SCHEMA_VERSION})"
        )
    try:
        return BenchResult.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{path}: invalid results file at {where}: {err['msg']}") from None
