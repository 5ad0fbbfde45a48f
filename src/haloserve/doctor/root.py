"""A read-only view of a filesystem root: the live ``/``, a captured directory, or a snapshot archive.

Paths are resolved as if the root were ``chroot``-ed: a symlink's absolute target starts again at the
root and ``..`` stops there, so nothing outside the root is ever read. Reads never raise; a missing,
unreadable, oversized or non-regular file comes back as a :class:`Read` with an ``error``. Only regular
files are ever opened (reading a FIFO or a device could block or have side effects).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import stat as st
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from haloserve.doctor.manifest import MANIFEST_NAME, DiskUsage, Manifest, Node, norm, parse_manifest
from haloserve.errors import ConfigError

READ_LIMIT = 1 << 20  # no file doctor reads is near 1 MiB; sysfs attributes are at most a page
ARCHIVE_LIMIT = 256 << 20  # uncompressed bytes kept from an archive (a snapshot is a few hundred KiB)
MAX_HOPS = 40  # symlinks followed in one path, as the kernel's ELOOP limit


@dataclass(frozen=True)
class Read:
    """A file's text, or why there is none (``"missing"``, ``"not a regular file"``, an OS error)."""

    text: str | None
    error: str | None = None


@dataclass(frozen=True)
class _Link:
    target: str
    kind: str = "link"


class Backend(Protocol):
    """The storage under a root: ``lstat`` (a symlink comes back with its target), ``read``, ``listdir``."""

    def lstat(self, path: str) -> Node | _Link | None:
        """The entry at ``path`` without following a final symlink (``None`` when absent)."""

    def read(self, path: str, limit: int) -> bytes:
        """At most ``limit`` bytes of a regular file; raises ``OSError``."""

    def listdir(self, path: str) -> list[str]:
        """Names in a directory; raises ``OSError``."""


_KINDS = (
    (st.S_ISREG, "file"),
    (st.S_ISDIR, "dir"),
    (st.S_ISCHR, "char"),
    (st.S_ISBLK, "block"),
    (st.S_ISFIFO, "fifo"),
    (st.S_ISSOCK, "socket"),
)


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "other"


class DirBackend:
    """A directory on disk (``/`` for the live host)."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def _real(self, path: str) -> str:
        return os.path.join(str(self.base), path) if path else str(self.base)

    def lstat(self, path: str) -> Node | _Link | None:
        """``os.lstat`` of the path under the base directory."""
        try:
            s = os.lstat(self._real(path))
        except (OSError, ValueError):
            return None
        if st.S_ISLNK(s.st_mode):
            try:
                return _Link(os.readlink(self._real(path)))
            except OSError:
                return None
        return Node(
            kind=_kind(s.st_mode),  # type: ignore[arg-type]
            size=s.st_size,
            mode=st.S_IMODE(s.st_mode),
            uid=s.st_uid,
            gid=s.st_gid,
            rdev=s.st_rdev,
        )

    def read(self, path: str, limit: int) -> bytes:
        """Open without following a final symlink and without blocking; regular files only."""
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        fd = os.open(self._real(path), flags | getattr(os, "O_CLOEXEC", 0))
        try:
            if not st.S_ISREG(os.fstat(fd).st_mode):
                raise OSError("not a regular file")
            chunks: list[bytes] = []
            left = limit
            while left > 0:
                chunk = os.read(fd, min(left, 65536))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def listdir(self, path: str) -> list[str]:
        """``os.listdir`` of the path under the base directory."""
        return os.listdir(self._real(path))


class ArchiveBackend:
    """A ``.tar.gz`` (or any tar) held in memory; never extracted to disk."""

    def __init__(self, archive: Path) -> None:
        self.entries: dict[str, Node | _Link] = {}
        self.data: dict[str, bytes] = {}
        self.children: dict[str, set[str]] = {"": set()}
        total = 0
        try:
            with tarfile.open(archive, "r:*") as tar:
                for member in tar:
                    name = norm(member.name)
                    if not name:
                        continue
                    entry = self._entry(member)
                    if entry is None:
                        continue
                    if member.isreg():
                        total += member.size
                        if total > ARCHIVE_LIMIT:
                            raise ConfigError(f"--root: {archive} is far larger than a doctor snapshot")
                        fh = tar.extractfile(member)
                        self.data[name] = fh.read(READ_LIMIT) if fh else b""
                    self._add(name, entry)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ConfigError(f"--root: cannot read archive {archive}: {exc}") from None

    @staticmethod
    def _entry(m: tarfile.TarInfo) -> Node | _Link | None:
        mode = m.mode & 0o7777
        if m.issym():
            return _Link(m.linkname)
        if m.islnk():  # a hard link: the same content as its target
            return _Link("/" + norm(m.linkname))
        if m.isdir():
            return Node(kind="dir", mode=mode, uid=m.uid, gid=m.gid)
        if m.isreg():
            return Node(kind="file", size=m.size, mode=mode, uid=m.uid, gid=m.gid)
        if m.ischr() or m.isblk():
            return Node(
                kind="char" if m.ischr() else "block",
                mode=mode,
                uid=m.uid,
                gid=m.gid,
                rdev=os.makedev(m.devmajor, m.devminor),
            )
        if m.isfifo():
            return Node(kind="fifo", mode=mode, uid=m.uid, gid=m.gid)
        return None

    def _add(self, name: str, entry: Node | _Link) -> None:
        self.entries[name] = entry
        parts = name.split("/")
        for i in range(len(parts)):
            parent = "/".join(parts[:i])
            self.children.setdefault(parent, set()).add(parts[i])
            child = "/".join(parts[: i + 1])
            if child != name and child not in self.entries:
                self.entries[child] = Node(kind="dir", mode=0o755)

    def lstat(self, path: str) -> Node | _Link | None:
        """The archive member at ``path`` (directories implied by deeper members included)."""
        if path == "":
            return Node(kind="dir", mode=0o755)
        return self.entries.get(path)

    def read(self, path: str, limit: int) -> bytes:
        """A regular member's bytes."""
        entry = self.entries.get(path)
        if entry is None:
            raise FileNotFoundError("missing")
        if path not in self.data:
            raise OSError("not a regular file")
        return self.data[path][:limit]

    def listdir(self, path: str) -> list[str]:
        """Names directly under ``path``."""
        entry = self.lstat(path)
        if entry is None:
            raise FileNotFoundError("missing")
        if entry.kind != "dir":
            raise NotADirectoryError("not a directory")
        return sorted(self.children.get(path, set()))


def _os_error(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


class Root:
    """Read-only, chroot-style access to files under a root, plus the root's ``halo-doctor.json``.

    ``live`` is true only for the running host's ``/``: then access checks and disk usage are asked of
    the OS, and no manifest is read. Other roots answer those from their manifest (or not at all).
    """

    def __init__(self, backend: Backend, label: str, *, live: bool = False) -> None:
        self.backend = backend
        self.label = label
        self.live = live
        self.manifest = Manifest() if live else self._load_manifest()

    def _load_manifest(self) -> Manifest:
        entry = self.backend.lstat(MANIFEST_NAME)
        if entry is None or entry.kind != "file":
            return Manifest()
        try:
            data = self.backend.read(MANIFEST_NAME, READ_LIMIT)
        except OSError as exc:
            raise ConfigError(f"{self.label}: cannot read {MANIFEST_NAME}: {_os_error(exc)}") from None
        return parse_manifest(data, self.label)

    # -- path resolution ------------------------------------------------------------------------
    def resolve(self, path: str) -> str | None:
        """The physical path under the root that ``path`` names (``None`` on a symlink loop)."""
        todo = norm_parts(path)
        done: list[str] = []
        hops = 0
        while todo:
            name = todo.pop(0)
            if name == "..":
                if done:
                    done.pop()
                continue
            candidate = "/".join([*done, name])
            entry = self.backend.lstat(candidate)
            if isinstance(entry, _Link):
                hops += 1
                if hops > MAX_HOPS:
                    return None
                if entry.target.startswith("/"):
                    done = []
                todo = norm_parts(entry.target, keep_dotdot=True) + todo
                continue
            done.append(name)
        return "/".join(done)

    # -- queries -------------------------------------------------------------------------------
    def stat(self, path: str) -> Node | None:
        """What ``stat`` (following symlinks inside the root) says of ``path``; ``None`` when absent."""
        key = norm(path)
        if key in self.manifest.nodes:
            return self.manifest.nodes[key]
        real = self.resolve(key)
        entry = self.backend.lstat(real) if real is not None else None
        if isinstance(entry, Node):
            return entry
        if key == "" or any(n.startswith(key + "/") for n in self.manifest.nodes):
            return Node(kind="dir", mode=0o755)  # a directory implied by declared nodes
        return None

    def exists(self, path: str) -> bool:
        """True when ``path`` exists under the root."""
        return self.stat(path) is not None

    def is_dir(self, path: str) -> bool:
        """True when ``path`` is a directory under the root."""
        node = self.stat(path)
        return node is not None and node.kind == "dir"

    def read(self, path: str) -> Read:
        """A file's text (UTF-8, undecodable bytes replaced), or why it cannot be read."""
        key = norm(path)
        if key in self.manifest.unreadable:
            return Read(None, self.manifest.unreadable[key])
        node = self.stat(key)
        if node is None:
            return Read(None, "missing")
        if node.kind != "file":
            return Read(None, "not a regular file")
        real = self.resolve(key)
        if real is None:
            return Read(None, "too many levels of symbolic links")
        try:
            data = self.backend.read(real, READ_LIMIT)
        except FileNotFoundError:
            # Declared in the manifest (a recorded size) without content: present but unread.
            return Read(None, "not captured") if key in self.manifest.nodes else Read(None, "missing")
        except OSError as exc:
            return Read(None, _os_error(exc))
        return Read(data.decode("utf-8", errors="replace"))

    def text(self, path: str) -> str | None:
        """A file's text stripped of surrounding whitespace, or ``None`` when it cannot be read."""
        got = self.read(path)
        return None if got.text is None else got.text.strip()

    def listdir(self, path: str) -> list[str]:
        """Sorted names in a directory (empty when missing or unreadable)."""
        key = norm(path)
        names: set[str] = set()
        real = self.resolve(key)
        if real is not None:
            with contextlib.suppress(OSError, ValueError):
                names.update(self.backend.listdir(real))
        prefix = key + "/" if key else ""
        for declared in self.manifest.nodes:
            if declared.startswith(prefix):
                names.add(declared[len(prefix) :].split("/")[0])
        names.discard("")
        if key == "":
            names.discard(MANIFEST_NAME)
        return sorted(names)

    def glob(self, pattern: str) -> list[str]:
        """Paths matching a pattern whose parts may hold ``*``, ``?`` and ``[...]`` (sorted)."""
        found = [""]
        for part in norm_parts(pattern):
            nxt: list[str] = []
            for base in found:
                if any(c in part for c in "*?["):
                    names = [n for n in self.listdir(base) if fnmatch.fnmatchcase(n, part)]
                    nxt.extend(f"{base}/{n}" if base else n for n in names)
                else:
                    candidate = f"{base}/{part}" if base else part
                    if self.exists(candidate):
                        nxt.append(candidate)
            found = nxt
        return sorted(p for p in found if p)

    def readlink(self, path: str) -> str | None:
        """The unfollowed target of a symlink (``socket:[inode]`` for a socket in ``/proc/<pid>/fd``)."""
        parent, _, name = norm(path).rpartition("/")
        real = self.resolve(parent)
        entry = self.backend.lstat(f"{real}/{name}" if real else name) if real is not None and name else None
        return entry.target if isinstance(entry, _Link) else None

    def access(self, path: str) -> bool | None:
        """Whether this process may open ``path`` for reading and writing (``None`` when unknown)."""
        key = norm(path)
        if self.live:
            real = self.resolve(key)
            return None if real is None else os.access("/" + real, os.R_OK | os.W_OK)
        return self.manifest.access.get(key)

    def disk_usage(self, path: str) -> DiskUsage | None:
        """Total and free bytes where ``path`` lives (``None`` when unknown or missing)."""
        key = norm(path)
        if self.live:
            real = self.resolve(key)
            if real is None:
                return None
            try:
                usage = shutil.disk_usage("/" + real)
            except OSError:
                return None
            return DiskUsage(total=usage.total, free=usage.free)
        return self.manifest.disk.get(key)


def norm_parts(path: str, *, keep_dotdot: bool = False) -> list[str]:
    """The parts of a path; ``..`` kept for symlink targets (resolved against the link's directory)."""
    if not keep_dotdot:
        return [p for p in norm(path).split("/") if p]
    return [p for p in str(path).split("/") if p not in ("", ".")]


def live_root() -> Root:
    """The running host's ``/``."""
    return Root(DirBackend(Path("/")), "/", live=True)


def open_root(spec: str | Path) -> Root:
    """``/`` (the live host), a captured directory, or a snapshot archive; a bad path is a ConfigError."""
    path = Path(spec).expanduser()
    if str(spec) in ("", "/"):
        return live_root()
    try:
        if path.is_dir():
            if path.resolve() == Path("/"):
                return live_root()
            return Root(DirBackend(path), str(path))
        if path.is_file():
            if not tarfile.is_tarfile(path):
                raise ConfigError(f"--root: {path} is neither a directory nor a tar archive")
            return Root(ArchiveBackend(path), str(path))
    except OSError as exc:
        raise ConfigError(f"--root: cannot open {path}: {_os_error(exc)}") from None
    raise ConfigError(f"--root: no such directory or archive: {path}")
