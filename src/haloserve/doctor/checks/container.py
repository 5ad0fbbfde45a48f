"""Software: a container runtime, and the exact device, group, IPC and seccomp settings ROCm needs in it."""

from __future__ import annotations

from haloserve.doctor.check import Check
from haloserve.doctor.host import Host
from haloserve.doctor.result import Status, Verdict

SECTION = "Software"
STANDARD_PATH = ("usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin", "snap/bin")
RUNTIMES = ("docker", "podman")


def _search_path(host: Host) -> list[str]:
    dirs: list[str] = []
    path = host.facts.getenv("PATH")
    for entry in path.split(":") if path else []:
        if entry.startswith("/"):
            dirs.append(entry.strip("/"))
    for entry in STANDARD_PATH:
        if entry not in dirs:
            dirs.append(entry)
    return dirs


def find_runtimes(host: Host) -> dict[str, str]:
    """``{"docker": "/usr/bin/docker", ...}`` for executables found on PATH under the root."""
    found: dict[str, str] = {}
    for name in RUNTIMES:
        for directory in _search_path(host):
            node = host.stat(f"{directory}/{name}")
            if node is not None and node.kind == "file" and node.mode & 0o111:
                found[name] = f"/{directory}/{name}"
                break
    return found


def check_container(host: Host) -> Verdict:
    """docker or podman on PATH, with this host's numeric group ids for ``group_add``."""
    found = find_runtimes(host)
    expected = "docker or podman, when serving from containers"
    if not found:
        return Verdict(
            Status.SKIP, "no docker or podman on PATH (only needed for containerised serving)", expected
        )
    parts = [f"{name} at {path}" for name, path in found.items()]
    notes: list[str] = []
    if host.amd_gpu_present:
        gids = [str(host.etc_group[g].gid) for g in ("video", "render") if g in host.etc_group]
        group_flags = " ".join(f"--group-add {g}" for g in gids)
        notes += [
            f"GPU container flags for this host: --device /dev/kfd --device /dev/dri {group_flags} "
            "--ipc=host --security-opt seccomp=unconfined",
            "--device /dev/kfd and /dev/dri: the compute interface and the render nodes ROCm and Vulkan "
            "open.",
            f"{group_flags}: this host's video and render group ids, numeric because the image's /etc/group "
            "does not know the host's render gid (the seed's 992 is not universal).",
            "--ipc=host: HIP/RCCL and PyTorch share memory through /dev/shm, only 64 MB in a default "
            "container.",
            "--security-opt seccomp=unconfined: AMD's ROCm container docs ask for it; the default profile "
            "blocks "
            "memory-policy syscalls some ROCm libraries use.",
            "Compose: devices: [/dev/kfd, /dev/dri]; group_add: ["
            + ", ".join(f"'{g}'" for g in gids)
            + "]; ipc: host; security_opt: [seccomp=unconfined]",
        ]
    if "podman" in found:
        notes.append(
            "podman: add --security-opt label=disable on SELinux hosts (Fedora) so the container may open "
            "/dev/kfd; "
            "rootless podman can use --group-add keep-groups instead of numeric ids."
        )
    if host.rdma_ports:
        notes.append(
            "RDMA in containers: --device /dev/infiniband --ulimit memlock=-1 --cap-add IPC_LOCK --network "
            "host."
        )
    if "docker" in found:
        socket = host.stat("run/docker.sock") or host.stat("var/run/docker.sock")
        if socket is None or socket.kind != "socket":
            parts.append(
                "no Docker engine socket at /run/docker.sock (client only, or rootless/remote engine)"
            )
        user = host.user
        docker_group = host.etc_group.get("docker")
        if user and docker_group is not None and user not in docker_group.members and host.facts.uid != 0:
            notes.append(f"{user} is not in the docker group: use sudo, or `sudo usermod -aG docker {user}`.")
    return Verdict(Status.OK, "; ".join(parts), expected, notes=tuple(notes))


CHECKS = (Check("container", "Container runtime", SECTION, check_container),)
