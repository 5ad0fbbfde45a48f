"""llama.cpp RPC workers (``halo rpc-worker``, ``ggml-rpc-server``): is one reachable from outside?

The RPC protocol has no authentication, and remote code execution and memory disclosure flaws have been
published for it (CVE-2024-42479, CVE-2024-42478, CVE-2024-42477). A worker belongs on loopback or on a
private link that only the main node of the split reaches.
"""

from __future__ import annotations

from haloserve.doctor.check import Check
from haloserve.doctor.host import Host
from haloserve.doctor.netlisten import (
    RPC_PORT,
    Listener,
    Worker,
    classify,
    parse_proc_net_tcp,
    parse_worker,
    socket_inode,
)
from haloserve.doctor.result import Status, Verdict

SECTION = "RPC workers"
TCP_FILES = ("proc/net/tcp", "proc/net/tcp6")
EXPOSED = ("wildcard", "public")
UNKNOWN = "?"  # a worker whose socket could not be tied to it and whose --host was not given


def workers(host: Host) -> list[Worker]:
    """RPC worker processes found under ``/proc`` (by their command line)."""
    found = []
    for path in host.root.glob("proc/[0-9]*/cmdline"):
        worker = parse_worker(path.split("/")[1], host.root.read(path).text)
        if worker is not None:
            found.append(worker)
    return found


def _private_address(host: Host) -> str | None:
    """The node's RoCE IPv4 address, the natural place for a worker (``None`` when there is none)."""
    for port in host.rdma_ports:
        for gid in port.roce_v2_ipv4():
            if gid.ipv4:
                return gid.ipv4
    return None


def _fix(worker: Worker | None, port: int, address: str, private: str | None) -> str:
    bind = private or "PRIVATE_ADDRESS"
    where = "the RoCE address" if private else "the node's address on the private link (ip -br addr)"
    restart = (
        f"{worker.kind} -H {bind} -p {port}"
        if worker is not None and not worker.kind.startswith("halo")
        else f"halo rpc-worker --host {bind} --port {port}"
    )
    return "\n".join(
        [
            f"{restart}   # restart the worker on {where} only",
            "# or keep it where it is and admit only the main node of the split:",
            f"sudo {'ip6tables' if ':' in address else 'iptables'} -I INPUT -p tcp --dport {port} "
            "! -s MAIN_NODE_ADDRESS -j DROP",
        ]
    )


def sockets_of(host: Host, pid: str) -> set[int] | None:
    """Socket inodes ``pid`` holds, from its ``/proc/<pid>/fd`` links (``None``: not readable here)."""
    names = host.root.listdir(f"proc/{pid}/fd")
    if not names:  # another user's process (or gone): its descriptors are not ours to read
        return None
    found = (socket_inode(host.root.readlink(f"proc/{pid}/fd/{n}")) for n in names)
    return {inode for inode in found if inode is not None}


def _seen(host: Host, listeners: list[Listener], procs: list[Worker]) -> list[tuple[Worker | None, int, str]]:
    """(worker if known, port, address) of every RPC port: sockets a worker holds (by inode, so a port
    set through ``HALO_RPC_WORKER_PORT`` counts), sockets on a worker's command-line port when its
    descriptors cannot be read, and any socket on 50052; a worker with neither is judged by its flags."""
    owned = {w.pid: sockets_of(host, w.pid) for w in procs}
    out: list[tuple[Worker | None, int, str]] = []
    for sock in listeners:
        owner = next((w for w in procs if sock.inode in (owned[w.pid] or ())), None)
        owner = owner or next((w for w in procs if owned[w.pid] is None and w.port == sock.port), None)
        if owner is not None or sock.port == RPC_PORT:
            out.append((owner, sock.port, sock.address))
    for w in procs:
        if not any(owner is w for owner, _, _ in out) and owned[w.pid] is None:
            out.append((w, w.port, w.host if w.host_given else UNKNOWN))
    return out


def check_rpc(host: Host) -> Verdict:
    """An RPC worker port open on every interface or a public address is a warning; loopback and private
    (RFC 1918, ULA, link-local) addresses pass."""
    expected = "RPC workers bound to loopback or a private address only the main node reaches"
    reads = [host.root.read(p) for p in TCP_FILES]
    listeners = [sock for r in reads for sock in parse_proc_net_tcp(r.text)]
    seen = _seen(host, listeners, workers(host))
    if not seen:
        if all(r.text is None for r in reads):
            return Verdict(Status.SKIP, f"cannot read /proc/net/tcp ({reads[0].error}) and no worker runs")
        return Verdict(
            Status.SKIP, f"no RPC worker: nothing listens on port {RPC_PORT} and no halo rpc-worker listens"
        )
    lines = [
        f"{_name(w)} on {_netloc(addr)}:{port} ({classify(addr)})"
        if addr != UNKNOWN
        else f"{_name(w)}: where it listens is unknown (its /proc/{w.pid if w else '?'}/fd is not readable)"
        for w, port, addr in seen
    ]
    why = (
        "The llama.cpp RPC protocol has no authentication: anyone who reaches the port can read and "
        "write the worker's memory and run code (CVE-2024-42479, CVE-2024-42478, CVE-2024-42477)."
    )
    exposed = [(w, port, addr) for w, port, addr in seen if addr != UNKNOWN and classify(addr) in EXPOSED]
    if exposed:
        worker, port, address = exposed[0]
        fix = _fix(worker, port, address, _private_address(host))
        return Verdict(Status.WARN, "; ".join(lines), expected, why=why, fix=fix)
    if any(addr == UNKNOWN for _, _, addr in seen):
        fix = "sudo halo doctor --check rpc   # root may read every process's descriptors"
        return Verdict(Status.WARN, "; ".join(lines), expected, why=why, fix=fix)
    notes: tuple[str, ...] = ()
    if any(classify(addr) == "private" for _, _, addr in seen):
        notes = (
            "A private address is reachable by every host on that network: keep it to the split's nodes.",
        )
    return Verdict(Status.OK, "; ".join(lines), expected, notes=notes)


def _name(worker: Worker | None) -> str:
    return f"{worker.kind} (pid {worker.pid})" if worker else "a listener"


def _netloc(address: str) -> str:
    return f"[{address}]" if ":" in address else address


CHECKS: tuple[Check, ...] = (Check("rpc", "RPC worker exposure", SECTION, check_rpc),)
