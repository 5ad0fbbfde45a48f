"""``--snapshot``: capture exactly what doctor read into a ``.tar.gz`` that ``--root`` accepts.

A :class:`Recorder` wraps a root and notes every read, ``stat``, listing, access check and disk query;
:func:`write_snapshot` turns that into an archive whose replay gives identical results. Nothing else is
taken: file contents only for files doctor read, the kernel command line cut to the parameters doctor
judges, ``/etc/group`` cut to the groups it looks at, names in globbed directories only when they matched,
and the process facts reduced the same way (see :mod:`haloserve.doctor.facts`).
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from haloserve import __version__
from haloserve.doctor.facts import HostFacts
from haloserve.doctor.manifest import MANIFEST_NAME, DiskUsage, Manifest, Node, norm
from haloserve.doctor.netlisten import listen_lines_only, parse_worker
from haloserve.doctor.parse import is_doctor_param, parse_cmdline, parse_group_file
from haloserve.doctor.root import Read, Root
from haloserve.errors import ConfigError

GROUPS_OF_INTEREST = ("render", "video", "docker")
_NOT_ERRORS = ("missing", "not a regular file")


class Recorder(Root):
    """A root that remembers what was asked of it (for snapshots)."""

    def __init__(self, inner: Root) -> None:
        self.backend = inner.backend
        self.label = inner.label
        self.live = inner.live
        self.manifest = inner.manifest
        self.reads: dict[str, Read] = {}
        self.stats: dict[str, Node] = {}
        self.listings: dict[str, list[str]] = {}
        self.accesses: dict[str, bool] = {}
        self.disks: dict[str, DiskUsage] = {}
        self.links: dict[str, str] = {}
        self._quiet = 0

    def stat(self, path: str) -> Node | None:
        """``Root.stat``, recorded."""
        node = super().stat(path)
        if node is not None and not self._quiet:
            self.stats[norm(path)] = node
        return node

    def read(self, path: str) -> Read:
        """``Root.read``, recorded."""
        got = super().read(path)
        if not self._quiet:
            self.reads[norm(path)] = got
        return got

    def listdir(self, path: str) -> list[str]:
        """``Root.listdir``, recorded (only for directories that exist, so absent ones stay absent)."""
        names = super().listdir(path)
        if not self._quiet:
            self._quiet += 1
            try:
                exists = super().is_dir(path)
            finally:
                self._quiet -= 1
            if exists:
                self.listings[norm(path)] = names
        return names

    def glob(self, pattern: str) -> list[str]:
        """``Root.glob``, recording only the matches (not every name in the directories searched)."""
        self._quiet += 1
        try:
            found = super().glob(pattern)
        finally:
            self._quiet -= 1
        for path in found:
            self.stat(path)
        return found

    def readlink(self, path: str) -> str | None:
        """``Root.readlink``, recorded: only ``socket:[inode]`` targets (what the rpc check asks for)."""
        target = super().readlink(path)
        if target is not None and target.startswith("socket:[") and not self._quiet:
            self.links[norm(path)] = target
        return target

    def access(self, path: str) -> bool | None:
        """``Root.access``, recorded."""
        allowed = super().access(path)
        if allowed is not None and not self._quiet:
            self.accesses[norm(path)] = allowed
        return allowed

    def disk_usage(self, path: str) -> DiskUsage | None:
        """``Root.disk_usage``, recorded."""
        usage = super().disk_usage(path)
        if usage is not None and not self._quiet:
            self.disks[norm(path)] = usage
        return usage


@dataclass(frozen=True)
class SnapshotInfo:
    """Where a snapshot went and what it holds."""

    path: Path
    files: int
    size: int


def _keep_groups(rec: Recorder) -> set[str]:
    groups = parse_group_file(rec.reads["etc/group"].text) if "etc/group" in rec.reads else {}
    owners = {n.gid for p, n in rec.stats.items() if p.startswith("dev/") and n.kind == "char"}
    keep = set(GROUPS_OF_INTEREST)
    keep.update(g.name for g in groups.values() if g.gid in owners)
    return keep


def _redact(path: str, text: str, keep_groups: set[str]) -> str:
    if path == "proc/cmdline":
        params = parse_cmdline(text).params
        return " ".join(k if v is None else f"{k}={v}" for k, v in params if is_doctor_param(k)) + "\n"
    if path in ("proc/net/tcp", "proc/net/tcp6"):  # listening sockets only: no peers, no connections
        return listen_lines_only(text)
    parts = path.split("/")
    if len(parts) == 3 and parts[0] == "proc" and parts[1].isdigit() and parts[2] == "cmdline":
        # only RPC workers' command lines: other processes' arguments may hold secrets
        return text if parse_worker(parts[1], text) is not None else ""
    if path == "etc/group":
        lines = [ln for ln in text.splitlines() if ln.split(":", 1)[0].strip() in keep_groups]
        return "\n".join(lines) + ("\n" if lines else "")
    return text


def _reduce_facts(facts: HostFacts, keep_groups: set[str]) -> HostFacts:
    groups = None if facts.groups is None else tuple(g for g in facts.groups if g in keep_groups)
    return facts.model_copy(update={"groups": groups})


def _info(name: str, node: Node | None, *, kind: str = "file", size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if kind == "dir" else tarfile.REGTYPE
    info.mode = node.mode if node is not None else (0o755 if kind == "dir" else 0o444)
    info.uid = node.uid if node is not None else 0
    info.gid = node.gid if node is not None else 0
    info.uname = info.gname = ""
    info.mtime = 0
    info.size = size
    return info


def build_manifest(rec: Recorder, facts: HostFacts, models_dir: str | None) -> Manifest:
    """The ``halo-doctor.json`` of a recording."""
    keep = _keep_groups(rec)
    content = {p for p, r in rec.reads.items() if r.text is not None}
    nodes = {p: n for p, n in rec.stats.items() if n.kind != "dir" and p not in content}
    unreadable = {
        p: r.error or "unreadable"
        for p, r in rec.reads.items()
        if r.text is None and r.error not in _NOT_ERRORS
    }
    return Manifest(
        haloserve=__version__,
        created=dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        source="live host" if rec.live else rec.label,
        facts=_reduce_facts(facts, keep),
        models_dir=norm(models_dir) if models_dir else None,
        nodes=nodes,
        unreadable=unreadable,
        access=dict(rec.accesses),
        disk=dict(rec.disks),
    )


def write_snapshot(rec: Recorder, facts: HostFacts, out: Path, models_dir: str | None = None) -> SnapshotInfo:
    """Write the recording to ``out`` (gzip-compressed tar, written atomically)."""
    manifest = build_manifest(rec, facts, models_dir)
    keep = _keep_groups(rec)
    files: dict[str, bytes] = {}
    for path, got in rec.reads.items():
        if got.text is not None and path:
            files[path] = _redact(path, got.text, keep).encode("utf-8")
    dirs = {p for p, n in rec.stats.items() if n.kind == "dir" and p} | {p for p in rec.listings if p}
    for path in [*files, *manifest.nodes, *list(dirs)]:
        parts = path.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    dirs -= set(files) | set(manifest.nodes)
    # Names doctor only saw in a listing are kept as empty files, so the listing replays the same.
    placeholders = {
        f"{directory}/{name}" if directory else name
        for directory, names in rec.listings.items()
        for name in names
    }
    links = {p: t for p, t in rec.links.items() if p not in files}
    dirs.update("/".join(p.split("/")[:i]) for p in links for i in range(1, len(p.split("/"))))
    placeholders -= set(files) | set(manifest.nodes) | dirs | set(links)

    out = out.expanduser()
    if not out.parent.is_dir():
        raise ConfigError(f"--snapshot: directory {out.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".halo-doctor-", suffix=".tar.gz", dir=out.parent)
    count = 0
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            data = manifest.dumps().encode("utf-8")
            tar.addfile(_info(MANIFEST_NAME, None, size=len(data)), io.BytesIO(data))
            for path in sorted(dirs | set(files) | placeholders | set(links)):
                count += 1
                if path in links:  # a process's socket: the link alone, pointing nowhere under the root
                    link = _info(path, None)
                    link.type, link.linkname = tarfile.SYMTYPE, links[path]
                    tar.addfile(link)
                elif path in dirs:
                    tar.addfile(_info(path, rec.stats.get(path), kind="dir"))
                elif path in files:
                    tar.addfile(
                        _info(path, rec.stats.get(path), size=len(files[path])), io.BytesIO(files[path])
                    )
                else:
                    tar.addfile(_info(path, None))
        os.replace(tmp, out)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ConfigError(f"--snapshot: cannot write {out}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return SnapshotInfo(path=out, files=count + len(manifest.nodes), size=out.stat().st_size)
