"""API keys and usage in one SQLite file (WAL mode, shared safely by worker processes and the CLI).

Keys are stored as SHA-256 hashes; the secret is shown once, at creation. Usage rows are counters
per (day, key, model), added to with UPSERTs in batches, so several gateway workers can write at
once and nothing is lost on restart.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from haloserve.errors import CommandError, ConfigError, NotFoundError

ANONYMOUS = "-"
KEY_PREFIX = "halo-"
USAGE_GROUPS = ("day", "key", "model")
_COUNTERS = ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    hint TEXT NOT NULL,
    created REAL NOT NULL,
    revoked REAL,
    rpm INTEGER NOT NULL DEFAULT 0,
    tpm INTEGER NOT NULL DEFAULT 0,
    models TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS usage (
    day TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, key_id, model)
);
"""


def hash_key(secret: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    """One key as stored (never the secret)."""

    id: str
    name: str
    hint: str
    created: float
    revoked: float | None = None
    rpm: int = 0
    tpm: int = 0
    models: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {
            "id": self.id,
            "name": self.name,
            "hint": self.hint,
            "created": self.created,
            "revoked": self.revoked,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "models": list(self.models),
        }


@dataclass
class UsageDelta:
    """Counters to add to one (day, key, model) row."""

    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class UsageRow:
    """One aggregated usage row as reported by ``halo usage``."""

    day: str
    key_id: str
    key_name: str
    model: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {**self.__dict__, "total_tokens": self.prompt_tokens + self.completion_tokens}


@dataclass
class CreatedKey:
    """A new key: the record plus the secret, which is never stored."""

    record: KeyRecord
    secret: str


def parse_groups(text: str, what: str = "by") -> list[str]:
    """``"key,model"`` -> ``["key", "model"]``; a ConfigError for an empty list or an unknown column."""
    by = [g.strip() for g in text.split(",") if g.strip()]
    if not by or any(g not in USAGE_GROUPS for g in by):
        raise ConfigError(f"{what} takes a comma list of {', '.join(USAGE_GROUPS)}")
    return by


def group_usage(rows: Iterable[UsageRow], by: list[str]) -> list[dict[str, Any]]:
    """Sum usage rows over the columns not in ``by`` (what ``halo usage`` and ``/admin/usage`` report)."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        r = row.as_dict()
        ident = tuple(r["key_name"] if g == "key" else r[g] for g in by)
        acc = out.get(ident)
        if acc is None:
            acc = out[ident] = {g: v for g, v in zip(by, ident, strict=True)}
            acc.update(dict.fromkeys(_COUNTERS, 0))
        for f in _COUNTERS:
            acc[f] += r[f]
    return [out[k] for k in sorted(out)]


def _row_to_key(row: sqlite3.Row) -> KeyRecord:
    return KeyRecord(
        id=row["id"],
        name=row["name"],
        hint=row["hint"],
        created=row["created"],
        revoked=row["revoked"],
        rpm=row["rpm"],
        tpm=row["tpm"],
        models=tuple(json.loads(row["models"] or "[]")),
    )


@dataclass
class Store:
    """The SQLite file; one short-lived connection per operation keeps it process- and thread-safe."""

    path: Path
    _ready: bool = field(default=False, repr=False)

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in WAL mode with the schema in place; commits on success."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"keys db {self.path}: {exc}") from None
        conn.row_factory = sqlite3.Row
        try:
            if not self._ready:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(_SCHEMA)
                self._ready = True
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise CommandError(f"keys db {self.path}: {exc}") from None
        finally:
            conn.close()

    # Keys
    def create_key(self, name: str, *, rpm: int = 0, tpm: int = 0, models: Iterable[str] = ()) -> CreatedKey:
        """Make a new key; the secret is returned once and only its hash is stored."""
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        rec = KeyRecord(
            id="key_" + uuid.uuid4().hex[:12],
            name=name,
            hint=secret[:9] + "..." + secret[-4:],
            created=time.time(),
            rpm=rpm,
            tpm=tpm,
            models=tuple(models),
        )
        with self.connect() as conn:
            conn.execute(
                "INSERT INTO keys (id, name, hash, hint, created, rpm, tpm, models) VALUES (?,?,?,?,?,?,?,?)",
                (rec.id, name, hash_key(secret), rec.hint, rec.created, rpm, tpm, json.dumps(list(models))),
            )
        return CreatedKey(rec, secret)

    def list_keys(self, *, include_revoked: bool = True) -> list[KeyRecord]:
        """Every key, oldest first."""
        with self.connect() as conn:
            rows = conn.execute("SELECT * FROM keys ORDER BY created").fetchall()
        keys = [_row_to_key(r) for r in rows]
        return keys if include_revoked else [k for k in keys if k.revoked is None]

    def revoke(self, ident: str) -> KeyRecord:
        """Revoke a key by id or name (a name must be unambiguous)."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT * FROM keys WHERE (id = ? OR name = ?) AND revoked IS NULL", (ident, ident)
            ).fetchall()
            if not rows:
                raise NotFoundError(f"no active key with id or name {ident!r}")
            if len(rows) > 1:
                raise CommandError(f"{len(rows)} active keys are named {ident!r}; revoke one by id")
            conn.execute("UPDATE keys SET revoked = ? WHERE id = ?", (time.time(), rows[0]["id"]))
        return _row_to_key(rows[0])

    def active_hashes(self) -> dict[str, KeyRecord]:
        """hash -> record for every key not revoked (what the gateway caches in memory)."""
        with self.connect() as conn:
            rows = conn.execute("SELECT * FROM keys WHERE revoked IS NULL").fetchall()
        return {r["hash"]: _row_to_key(r) for r in rows}

    def version(self) -> tuple[int, float]:
        """Changes made to the keys table, as (count of keys, latest created/revoked time)."""
        with self.connect() as conn:
            row = conn.execute(
                "SELECT COUNT(*), MAX(MAX(created), COALESCE(MAX(revoked), 0)) FROM keys"
            ).fetchone()
        return int(row[0]), float(row[1] or 0.0)

    # Usage
    def add_usage(self, deltas: dict[tuple[str, str, str], UsageDelta]) -> None:
        """Add counters in one transaction (UPSERT per row)."""
        if not deltas:
            return
        rows = [
            (day, key, model, d.requests, d.errors, d.prompt_tokens, d.completion_tokens)
            for (day, key, model), d in deltas.items()
        ]
        with self.connect() as conn:
            conn.executemany(
                "INSERT INTO usage VALUES (?,?,?,?,?,?,?) ON CONFLICT(day, key_id, model) DO UPDATE SET "
                "requests = requests + excluded.requests, errors = errors + excluded.errors, "
                "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
                "completion_tokens = completion_tokens + excluded.completion_tokens",
                rows,
            )

    def usage(
        self,
        *,
        since: str | None = None,
        until: str | None = None,
        key: str | None = None,
        model: str | None = None,
    ) -> list[UsageRow]:
        """Usage rows per day, key and model, filtered; ``key`` matches an id or a name."""
        sql = (
            "SELECT u.*, COALESCE(k.name, u.key_id) AS key_name FROM usage u "
            "LEFT JOIN keys k ON k.id = u.key_id WHERE 1=1"
        )
        args: list[Any] = []
        if since:
            sql += " AND u.day >= ?"
            args.append(since)
        if until:
            sql += " AND u.day <= ?"
            args.append(until)
        if key:
            sql += " AND (u.key_id = ? OR k.name = ?)"
            args += [key, key]
        if model:
            sql += " AND u.model = ?"
            args.append(model)
        sql += " ORDER BY u.day, key_name, u.model"
        with self.connect() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [
            UsageRow(
                day=r["day"],
                key_id=r["key_id"],
                key_name=r["key_name"],
                model=r["model"],
                requests=r["requests"],
                errors=r["errors"],
                prompt_tokens=r["prompt_tokens"],
                completion_tokens=r["completion_tokens"],
            )
            for r in rows
        ]
