"""What a check returns: a verdict with what was seen, what was expected, why it matters and the fix."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Status(str, Enum):
    """A check's verdict, from best to worst (``skip`` means "does not apply here")."""

    OK = "ok"
    SKIP = "skip"
    WARN = "warn"
    FAIL = "fail"


# Worse verdicts rank higher; ``worst`` uses this to fold several findings into one.
_RANK = {Status.OK: 0, Status.SKIP: 0, Status.WARN: 1, Status.FAIL: 2}


def worst(statuses: Iterable[Status], default: Status = Status.OK) -> Status:
    """The most severe of ``statuses`` (``default`` when there are none)."""
    found = list(statuses)
    if not found:
        return default
    return max(found, key=lambda s: _RANK[s])


@dataclass(frozen=True)
class Verdict:
    """What a check function returns; the registry adds the check's ``id`` and ``title``."""

    status: Status
    observed: str
    expected: str = ""
    why: str = ""
    fix: str = ""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict: ``observed`` vs ``expected``, ``why`` it matters, a pasteable ``fix``.

    ``fix`` holds exact commands or a GRUB line, one per line; doctor never runs them itself.
    ``notes`` carry advice that is not a fix (for example the container flags a host needs).
    """

    id: str
    title: str
    status: Status
    observed: str
    expected: str = ""
    why: str = ""
    fix: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, check_id: str, title: str, verdict: Verdict) -> CheckResult:
        """A result from a check's verdict."""
        return cls(
            id=check_id,
            title=title,
            status=verdict.status,
            observed=verdict.observed,
            expected=verdict.expected,
            why=verdict.why,
            fix=verdict.fix,
            notes=tuple(verdict.notes),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {
            "id": self.id,
            "title": self.title,
            "status": self.status.value,
            "observed": self.observed,
            "expected": self.expected,
            "why": self.why,
            "fix": self.fix,
            "notes": list(self.notes),
        }


def exit_code(results: Iterable[CheckResult]) -> int:
    """0 when nothing failed, 1 when at least one check failed."""
    return 1 if any(r.status is Status.FAIL for r in results) else 0


def counts(results: Iterable[CheckResult]) -> dict[str, int]:
    """How many results have each status, in the order ok, warn, fail, skip."""
    out = {s.value: 0 for s in (Status.OK, Status.WARN, Status.FAIL, Status.SKIP)}
    for r in results:
        out[r.status.value] += 1
    return out
