"""The ``rpc`` check: an RPC worker port open on every interface or a public address is flagged."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from haloserve.doctor import Status
from haloserve.doctor.netlisten import classify, parse_proc_net_tcp, parse_worker
from tests.doctor.conftest import FIXTURES, results_for, write_tree

HEAD = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def sock_line(local: str, state: str = "0A", remote: str = "00000000:0000", inode: int = 4100) -> str:
    return (
        f"   0: {local} {remote} {state} 00000000:00000000 00:00000000 00000000  1000  0 {inode} 1 0 100 0\n"
    )


def tree(tmp_path: Path, tcp: str = "", tcp6: str = "", procs: dict[str, str] | None = None) -> Path:
    files = {"proc/net/tcp": HEAD + tcp, "proc/net/tcp6": HEAD + tcp6}
    files.update({f"proc/{pid}/cmdline": text for pid, text in (procs or {}).items()})
    return write_tree(tmp_path / "root", files)


def test_proc_net_tcp_addresses_are_decoded() -> None:
    # 10.0.1.2:50052 is stored as the little-endian word 0201000A and the big-endian port C384
    text = HEAD + sock_line("0201000A:C384") + sock_line("0100007F:0277", state="01") + "garbage line\n"
    (sock,) = parse_proc_net_tcp(text)
    assert (sock.address, sock.port) == ("10.0.1.2", 50052)
    v6 = (
        HEAD
        + sock_line("0000000000000000FFFF00000100007F:C384")
        + sock_line("000080FE000000000000000001000000:C384")
    )
    got = [(ipaddress.ip_address(s.address), s.port) for s in parse_proc_net_tcp(v6)]
    assert got == [
        (ipaddress.ip_address("::ffff:127.0.0.1"), 50052),
        (ipaddress.ip_address("fe80::1"), 50052),
    ]


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("0.0.0.0", "wildcard"), ("::", "wildcard"), ("127.0.0.1", "loopback"), ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"), ("10.0.1.2", "private"), ("172.20.0.1", "private"),
        ("192.168.1.12", "private"), ("fd00::2", "private"), ("fe80::1", "private"),
        ("169.254.3.4", "private"), ("203.0.113.7", "public"), ("8.8.8.8", "public"),
        ("2001:db8::1", "public"), ("172.32.0.1", "public"),
    ],
)  # fmt: skip
def test_addresses_are_classified(address: str, kind: str) -> None:
    assert classify(address) == kind


def test_worker_command_lines() -> None:
    w = parse_worker(
        "7", "/usr/bin/python3\0/usr/local/bin/halo\0rpc-worker\0--host=10.0.1.2\0--port\00050060\0"
    )
    assert w is not None and (w.kind, w.host, w.port) == ("halo rpc-worker", "10.0.1.2", 50060)
    w = parse_worker("8", "/opt/llama/bin/ggml-rpc-server\0-H\0000.0.0.0\0-p\00050053\0-c\0")
    assert w is not None and (w.kind, w.host, w.port) == ("ggml-rpc-server", "0.0.0.0", 50053)
    w = parse_worker("9", "rpc-server\0")
    assert w is not None and (w.host, w.port) == ("127.0.0.1", 50052)
    assert parse_worker("10", "/usr/bin/python3\0-m\0http.server\0rpc-worker\0") is None
    assert parse_worker("11", "/usr/local/bin/halo\0serve\0--rpc\0a:50052\0") is None
    assert parse_worker("12", None) is None


def test_a_public_address_warns_with_the_fix(tmp_path: Path) -> None:
    root = tree(tmp_path, tcp=sock_line("0771CBCB:C384"))  # 203.203.113.7 (little-endian 0x0771CBCB)
    r = results_for(root, "rpc")["rpc"]
    assert r.status is Status.WARN and "203.203.113.7:50052 (public)" in r.observed
    assert "CVE-2024-42479" in r.why
    assert "halo rpc-worker --host PRIVATE_ADDRESS --port 50052" in r.fix and "iptables" in r.fix


def test_a_wildcard_rpc_server_on_another_port_warns(tmp_path: Path) -> None:
    procs = {"31": "/usr/bin/ggml-rpc-server\0-H\0::\0-p\00050053\0"}
    root = tree(tmp_path, tcp6=sock_line("00000000000000000000000000000000:C385"), procs=procs)
    r = results_for(root, "rpc")["rpc"]
    assert r.status is Status.WARN and "ggml-rpc-server (pid 31) on [::]:50053 (wildcard)" in r.observed
    assert "ggml-rpc-server -H PRIVATE_ADDRESS -p 50053" in r.fix and "sudo ip6tables -I INPUT" in r.fix


def test_loopback_and_private_pass(tmp_path: Path) -> None:
    root = tree(tmp_path, tcp=sock_line("0100007F:C384") + sock_line("0201000A:C385"))
    procs = {"40": "halo\0rpc-worker\0--host\00010.0.1.2\0--port\00050053\0"}
    (root / "proc/40").mkdir()
    (root / "proc/40/cmdline").write_text(procs["40"])
    r = results_for(root, "rpc")["rpc"]
    assert r.status is Status.OK, r.observed
    assert (
        "127.0.0.1:50052 (loopback)" in r.observed
        and "halo rpc-worker (pid 40) on 10.0.1.2:50053" in r.observed
    )
    assert r.notes and "private" in r.notes[0]


def test_a_worker_is_tied_to_its_socket_by_inode(tmp_path: Path) -> None:
    # HALO_RPC_WORKER_HOST/PORT put it on 0.0.0.0:50060: nothing on its command line says so
    root = tree(tmp_path, tcp=sock_line("00000000:C38C", inode=5005), procs={"51": "halo\0rpc-worker\0"})
    (root / "proc/51/fd").mkdir()
    (root / "proc/51/fd/0").symlink_to("/dev/null")
    (root / "proc/51/fd/9").symlink_to("socket:[5005]")
    r = results_for(root, "rpc")["rpc"]
    assert r.status is Status.WARN and r.observed == "halo rpc-worker (pid 51) on 0.0.0.0:50060 (wildcard)"
    assert "halo rpc-worker --host PRIVATE_ADDRESS --port 50060" in r.fix


def test_a_worker_whose_socket_cannot_be_seen_is_not_passed(tmp_path: Path) -> None:
    root = tree(tmp_path, procs={"61": "halo\0rpc-worker\0"})  # no fd directory: another user's process
    r = results_for(root, "rpc")["rpc"]
    assert r.status is Status.WARN and "where it listens is unknown" in r.observed
    assert r.fix.startswith("sudo halo doctor --check rpc")
    (root / "proc/61/fd").mkdir()
    (root / "proc/61/fd/0").symlink_to("/dev/null")  # readable, and it listens nowhere (yet)
    assert results_for(root, "rpc")["rpc"].status is Status.SKIP


def test_nothing_listening_or_nothing_readable_is_a_skip(tmp_path: Path) -> None:
    other = tree(tmp_path, tcp=sock_line("00000000:0016"))  # sshd on 0.0.0.0:22 is not an RPC worker
    assert results_for(other, "rpc")["rpc"].status is Status.SKIP
    empty = write_tree(tmp_path / "empty", {"etc/os-release": "ID=debian\n"})
    r = results_for(empty, "rpc")["rpc"]
    assert r.status is Status.SKIP and "cannot read /proc/net/tcp" in r.observed


def test_snapshot_keeps_listeners_and_workers_only(tmp_path: Path) -> None:
    from haloserve.cli import main

    archive = tmp_path / "s.tar.gz"
    assert (
        main(["doctor", "--root", str(FIXTURES / "rdma-node"), "--check", "rpc", "--snapshot", str(archive)])
        == 0
    )
    with tarfile.open(archive) as tar:
        text = {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert "0201000A:C384" not in text["proc/net/tcp"] and "00000000:C384" in text["proc/net/tcp"]
    assert "sk-not-a-real-key" not in "".join(text.values())  # another process's arguments stay home
    assert "rpc-worker" in text["proc/4242/cmdline"]
    with tarfile.open(archive) as tar:
        links = {m.name: m.linkname for m in tar.getmembers() if m.issym()}
    assert links == {"proc/4242/fd/7": "socket:[41001]"}  # the worker's socket, nothing else
    before = results_for(FIXTURES / "rdma-node", "rpc")["rpc"]
    after = results_for(archive, "rpc")["rpc"]
    assert (after.status, after.observed, after.fix) == (before.status, before.observed, before.fix)


@pytest.mark.process
def test_live_host_names_a_running_worker() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # the port comes from the environment, as HALO_RPC_WORKER_PORT gives it: only the socket says where
    code = (
        "import os,socket,time; s=socket.socket(); "
        "s.bind(('127.0.0.1', int(os.environ['HALO_RPC_WORKER_PORT']))); s.listen(); time.sleep(60)"
    )
    env = {**os.environ, "HALO_RPC_WORKER_PORT": str(port)}
    child = subprocess.Popen([sys.executable, "-c", code, "halo", "rpc-worker"], env=env)
    try:
        want = f"halo rpc-worker (pid {child.pid}) on 127.0.0.1:{port} (loopback)"
        deadline = time.monotonic() + 30
        while True:
            r = results_for("/", "rpc")["rpc"]
            if want in r.observed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert want in r.observed, r.observed
    finally:
        child.kill()
        child.wait()
