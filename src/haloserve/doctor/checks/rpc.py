"""llama.cpp RPC workers (``halo rpc-worker``, ``ggml-rpc-server``): is one reachable from outside?

The RPC protocol has no authentication, and remote code execution and memory disclosure flaws have been
published for it (CVE-2024-42479, CVE-2024-42478, CVE-2024-42477). A worker belongs on loopback or on a
private link that only the main node of the split reaches.
"""

from __future__ import annotations

from haloserve.doctor.check import Check
from haloserve.doctor.host import Host
from haloserve.doctor.netlisten import RPC_PORT, Worker, classify, parse_proc_net_tcp, parse_worker
from haloserve.doctor.result import Status, Verdict

SECTION = "RPC workers"
TCP_FILES = ("proc/net/tcp", "proc/net/tcp6")
EXPOSED = ("wildcard", "public")


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


def check_rpc(host: Host) -> Verdict:
    """An RPC worker port open on every interface or a public address is a warning; loopback and private
    (RFC 1918, ULA, link-local) addresses pass."""
    expected = "RPC workers bound to loopback or a private address only the main node reaches"
    reads = [host.root.read(p) for p in TCP_FILES]
    listeners = [sock for r in reads for sock in parse_proc_net_tcp(r.text)]
    procs = workers(host)
    ports = {RPC_PORT} | {w.port for w in procs}
    seen: list[tuple[Worker | None, int, str]] = []  # (the process if known, port, address)
    for sock in listeners:
        if sock.port in ports:
            seen.append((next((w for w in procs if w.port == sock.port), None), sock.port, sock.address))
    for w in procs:  # no socket table (another network namespace): judge what it was told to bind
        if not any(port == w.port for _, port, _ in seen):
            seen.append((w, w.port, w.host))
    if not seen:
        if all(r.text is None for r in reads):
            return Verdict(Status.SKIP, f"cannot read /proc/net/tcp ({reads[0].error}) and no worker runs")
        return Verdict(
            Status.SKIP, f"no RPC worker: nothing listens on port {RPC_PORT} and no halo rpc-worker runs"
        )
    lines = [f"{_name(w)} on {_netloc(addr)}:{port} ({classify(addr)})" for w, port, addr in seen]
    exposed = [(w, port, addr) for w, port, addr in seen if classify(addr) in EXPOSED]
    if exposed:
        worker, port, address = exposed[0]
        return Verdict(
            Status.WARN,
            "; ".join(lines),
            expected,
            why=(
                "The llama.cpp RPC protocol has no authentication: anyone who reaches the port can read and "
                "write the worker's memory and run code (CVE-2024-42479, CVE-2024-42478, CVE-2024-42477)."
            ),
            fix=_fix(worker, port, address, _private_address(host)),
        )
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
