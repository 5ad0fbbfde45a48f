"""Human output for ``halo doctor``: a grouped, coloured table, then the details and fixes of each problem.

Fixes are printed as plain, unwrapped lines without boxes around them, so they copy and paste cleanly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from haloserve.doctor.check import SECTIONS, Check
from haloserve.doctor.registry import REGISTRY
from haloserve.doctor.result import CheckResult, Status, counts, exit_code
from haloserve.doctor.snapshot import SnapshotInfo
from haloserve.printable import printable

STYLE = {Status.OK: "green", Status.WARN: "yellow", Status.FAIL: "bold red", Status.SKIP: "dim"}
MARK = {Status.OK: "✔ ok", Status.WARN: "! warn", Status.FAIL: "✘ FAIL", Status.SKIP: "- skip"}


def _section(result: CheckResult) -> str:
    check = REGISTRY.get(result.id)
    return check.section if check else SECTIONS[-1]


def _rows(results: Sequence[CheckResult]) -> list[tuple[str, list[tuple[Text, Text, Text]]]]:
    grouped: dict[str, list[CheckResult]] = {}
    for r in results:
        grouped.setdefault(_section(r), []).append(r)
    out = []
    for section in SECTIONS:
        items = grouped.get(section, [])
        if not items:
            continue
        skipped = {r.observed for r in items}
        if len(items) > 1 and all(r.status is Status.SKIP for r in items) and len(skipped) == 1:
            ids = f"{items[0].id.split('.')[0]} ({len(items)} checks)"
            out.append(
                (
                    section,
                    [
                        (
                            Text(MARK[Status.SKIP], STYLE[Status.SKIP]),
                            Text(ids),
                            Text(printable(items[0].observed, multiline=True)),
                        )
                    ],
                )
            )
            continue
        rows = [
            (Text(MARK[r.status], STYLE[r.status]), Text(r.id), Text(printable(r.observed, multiline=True)))
            for r in items
        ]
        out.append((section, rows))
    return out


def build_table(results: Sequence[CheckResult], title: str) -> Table:
    """The summary table: one row per check, grouped by section."""
    table = Table(title=title, title_justify="left", show_lines=False, expand=False)
    table.add_column("Status", no_wrap=True)
    table.add_column("Check", no_wrap=True, style="cyan")
    table.add_column("Observed", overflow="fold")
    for index, (section, rows) in enumerate(_rows(results)):
        if index:
            table.add_section()
        table.add_row(Text(""), Text(section, style="bold"), Text(""))
        for row in rows:
            table.add_row(*row)
    return table


def _details(result: CheckResult) -> Group:
    parts: list[Text] = [
        Text(f"{MARK[result.status]}  {result.id}: {result.title}", style=STYLE[result.status])
    ]
    for label, value in (("Observed", result.observed), ("Expected", result.expected), ("Why", result.why)):
        if value:
            line = Text(f"  {label}: ", style="bold")
            line.append(printable(value, multiline=True))
            parts.append(line)
    if result.fix:
        parts.append(Text("  Fix:", style="bold"))
        parts.extend(Text(f"    {printable(line)}") for line in result.fix.splitlines())
    for note in result.notes:
        first, *rest = printable(note, multiline=True).splitlines()
        parts.append(Text(f"  Note: {first}", style="dim"))
        parts.extend(Text(f"    {line}") for line in rest)
    return Group(*parts)


def render_report(
    console: Console,
    results: Sequence[CheckResult],
    *,
    root_label: str,
    snapshot: SnapshotInfo | None = None,
) -> None:
    """Print the table, the details of every warning and failure, notes, and a one-line summary."""
    console.print(build_table(results, f"halo doctor: {root_label}"))
    problems = [r for r in results if r.status in (Status.FAIL, Status.WARN)]
    problems.sort(key=lambda r: r.status is not Status.FAIL)
    for result in problems:
        console.print()
        console.print(_details(result), soft_wrap=True)
    noted = [r for r in results if r.status is Status.OK and r.notes]
    if noted:
        console.print()
        console.print(Text("Notes", style="bold"))
        for result in noted:
            for note in result.notes:
                first, *rest = printable(note, multiline=True).splitlines()
                console.print(Text(f"  {result.id}: {first}"), soft_wrap=True)
                for line in rest:
                    console.print(Text(f"    {line}"), soft_wrap=True)
    c = counts(results)
    summary = Text("\n")
    for key, style in (("fail", "bold red"), ("warn", "yellow"), ("ok", "green"), ("skip", "dim")):
        summary.append(f"{c[key]} {key}", style=style if c[key] else "dim")
        summary.append("  ")
    summary.append(f"(exit code {exit_code(results)})", style="dim")
    console.print(summary)
    if snapshot is not None:
        where = printable(snapshot.path)
        console.print(
            Text(f"Snapshot written to {where} ({snapshot.files} entries, {snapshot.size} bytes)"),
            soft_wrap=True,
        )


def render_list(checks: Iterable[Check]) -> Table:
    """The table of check ids for ``--list``."""
    table = Table(title="halo doctor checks", title_justify="left")
    table.add_column("Check", style="cyan", no_wrap=True)
    table.add_column("Section")
    table.add_column("What it checks")
    for check in checks:
        doc = (check.run.__doc__ or "").strip().splitlines()[0] if check.run.__doc__ else check.title
        table.add_row(check.id, check.section, doc.replace("``", ""))
    return table
