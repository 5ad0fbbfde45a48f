"""GPU access: which GPU this is, whether its device nodes exist and open, and the user's groups."""

from __future__ import annotations

from haloserve.doctor import fixes
from haloserve.doctor.check import Check
from haloserve.doctor.checks._common import no_amd_gpu
from haloserve.doctor.gfx import strix_halo_model
from haloserve.doctor.host import GpuNode, Host
from haloserve.doctor.manifest import Node
from haloserve.doctor.result import Status, Verdict

SECTION = "GPU access"
GROUPS = ("render", "video")


def _describe(gpu: GpuNode) -> str:
    text = gpu.label
    if gpu.target is not None and gpu.target.strix_halo:
        model = strix_halo_model(gpu.compute_units)
        if model:
            text = text.replace("Radeon 8060S / 8050S / 8040S", model)
    return text


def check_gpu(host: Host) -> Verdict:
    """The GPUs in the KFD topology, named from ``gfx_target_version`` (gfx1151 is Strix Halo)."""
    expected = "an AMD gfx1151 GPU (Strix Halo: Ryzen AI Max, Radeon 8060S)"
    why = "haloserve's defaults (memory split, TTM limit, kernels) are built for gfx1151."
    gpus = host.gpus
    if not gpus:
        if host.amd_gpu_present:
            observed = "amdgpu is present but the KFD compute interface is missing (/sys/class/kfd)"
            return Verdict(
                Status.FAIL,
                observed,
                expected,
                "ROCm talks to the GPU through KFD; without it only Vulkan can use the GPU.",
                "sudo dmesg | grep -iE 'kfd|amdgpu' | tail -n 30   # KFD init errors\n"
                "# a kernel built without CONFIG_HSA_AMD has no KFD: use your distribution's stock kernel",
            )
        return Verdict(
            Status.FAIL,
            "no AMD GPU found: this host is not a Strix Halo (halo serve would run on the CPU only)",
            expected,
            why,
            "# run halo doctor on the Strix Halo machine itself, or on a snapshot taken there:\n"
            "halo doctor --snapshot strix.tar.gz   # on the Strix Halo host\n"
            "halo doctor --root strix.tar.gz        # anywhere",
        )
    lines = [_describe(g) for g in gpus]
    problems = [f"KFD node {g.node}: {g.problem}" for g in gpus if g.problem]
    notes: list[str] = []
    if len(gpus) > 1:
        order = ", ".join(f"{i}={g.target.name if g.target else '?'}" for i, g in enumerate(gpus))
        notes.append(
            f"Several GPUs ({order}): pick the one halo serve / llama.cpp uses with "
            "HIP_VISIBLE_DEVICES=<index> "
            "(ROCm numbers GPUs in KFD node order); Vulkan numbers them on its own (GGML_VK_VISIBLE_DEVICES)."
        )
        for var in ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"):
            value = host.facts.getenv(var)
            if value is not None:
                notes.append(f"{var}={value} is set in this environment.")
    halo = host.strix_halo
    if halo is not None:
        status = Status.WARN if problems else Status.OK
        return Verdict(status, "; ".join(lines + problems), expected, notes=tuple(notes))
    named = [g for g in gpus if g.target is not None]
    observed = "; ".join(lines + problems)
    if not named:
        return Verdict(
            Status.WARN, observed, expected, "The GPU could not be identified from KFD.", notes=tuple(notes)
        )
    if any(g.target is not None and g.target.name == "gfx1150" for g in gpus):
        notes.append(
            "gfx1150 is Strix Point, not Strix Halo: kernels built for one do not run on the other "
            "(HSA_OVERRIDE_GFX_VERSION cannot turn one into the other)."
        )
    return Verdict(
        Status.WARN,
        f"not a Strix Halo GPU: {observed}",
        expected,
        why + " Other AMD GPUs work with ROCm or Vulkan, but the advice here may not fit them.",
        notes=tuple(notes),
    )


def _gids_of(host: Host, names: tuple[str, ...] | None) -> set[int] | None:
    if names is None:
        return None
    out = set()
    for name in names:
        group = host.etc_group.get(name)
        if group is not None:
            out.add(group.gid)
        elif name.isdigit():
            out.add(int(name))
    return out


def _may_open(node: Node, uid: int | None, gids: set[int] | None) -> bool | None:
    """Whether mode bits let this uid/gids open the node read-write (ACLs not considered)."""
    if uid is None or gids is None:
        return None
    if uid == 0:
        return True
    if node.uid == uid:
        bits = (node.mode >> 6) & 0o7
    elif node.gid in gids:
        bits = (node.mode >> 3) & 0o7
    else:
        bits = node.mode & 0o7
    return bits & 0o6 == 0o6


def _owner(host: Host, node: Node) -> str:
    group = host.group_name(node.gid) or str(node.gid)
    return f"mode {node.mode:04o}, group {group}"


def check_devices(host: Host) -> Verdict:
    """``/dev/kfd`` and the GPU's ``/dev/dri/renderD*`` exist and this user can open them."""
    skip = no_amd_gpu(host)
    if skip:
        return skip
    wanted = ["dev/kfd"]
    renders = [g.render_node for g in host.gpus if g.render_node]
    wanted += renders or host.root.glob("dev/dri/renderD*") or ["dev/dri/renderD128"]
    expected = "character devices /dev/kfd and /dev/dri/renderD*, readable and writable by you"
    why = (
        "ROCm opens /dev/kfd and a render node; Vulkan opens the render node. "
        "Without access the GPU is invisible."
    )
    missing, denied, fine, unknown = [], [], [], []
    own_gids = _gids_of(host, host.facts.groups)
    checking_self = host.options.user in (None, host.facts.user)
    for path in wanted:
        node = host.stat(path)
        if node is None or node.kind != "char":
            missing.append(f"/{path}" + ("" if node is None else f" (is a {node.kind}, not a device)"))
            continue
        allowed = host.root.access(path) if checking_self else None
        if allowed is None and checking_self:
            allowed = _may_open(node, host.facts.uid, own_gids)
        if allowed is None:
            unknown.append(f"/{path} ({_owner(host, node)})")
        elif allowed:
            fine.append(f"/{path}")
        else:
            denied.append(f"/{path} ({_owner(host, node)})")
    parts = []
    if fine:
        parts.append("usable: " + ", ".join(fine))
    if unknown:
        parts.append("present, access not verifiable here: " + ", ".join(unknown))
    if denied:
        parts.append("permission denied: " + ", ".join(denied))
    if missing:
        parts.append("missing: " + ", ".join(missing))
    observed = "; ".join(parts)
    if missing:
        fix = (
            "sudo modprobe amdgpu   # creates /dev/kfd and /dev/dri/*\n"
            "ls -l /dev/kfd /dev/dri/   # check again; see the amdgpu and gpu checks if still missing"
        )
        return Verdict(Status.FAIL, observed, expected, why, fix)
    if denied:
        rule = 'SUBSYSTEM=="kfd", KERNEL=="kfd", GROUP="render", MODE="0660"'
        fix = (
            fixes.add_to_groups(host.user, list(GROUPS))
            + "\n# if /dev/kfd is not group render on this distribution, add a udev rule:\n"
            + fixes.tee(rule, "/etc/udev/rules.d/70-kfd.rules")
            + "\nsudo udevadm control --reload && sudo udevadm trigger"
        )
        return Verdict(Status.FAIL, observed, expected, why, fix)
    return Verdict(Status.OK, observed, expected)


def check_groups(host: Host) -> Verdict:
    """The user is in ``render`` and ``video`` (the groups that own the GPU device nodes)."""
    skip = no_amd_gpu(host)
    if skip:
        return skip
    user = host.user
    expected = "member of render and video, and the current login session has them"
    why = "/dev/kfd and /dev/dri/renderD* belong to render (video on older systems); others cannot open them."
    if user is None:
        return Verdict(Status.SKIP, "user not known for this root (pass --user NAME)", expected)
    checking_self = host.options.user in (None, host.facts.user)
    if checking_self and host.facts.uid == 0:
        return Verdict(
            Status.OK,
            f"running as root ({user}): device access does not depend on groups",
            expected,
            notes=(
                "The account that runs `halo serve` still needs render and video: check it with --user NAME.",
            ),
        )
    wanted = [g for g in GROUPS if g in host.etc_group]
    for path in ("dev/kfd", *[g.render_node for g in host.gpus if g.render_node]):
        node = host.stat(path)
        name = host.group_name(node.gid) if node is not None and node.kind == "char" else None
        if name and name not in wanted and name != "root":
            wanted.append(name)
    if host.etc_group_read.text is None:
        return Verdict(Status.WARN, f"cannot read /etc/group ({host.etc_group_read.error})", expected, why)
    if not wanted:
        return Verdict(Status.WARN, "neither render nor video exists in /etc/group", expected, why)
    session = set(host.facts.groups) if (checking_self and host.facts.groups is not None) else None
    missing, stale, present = [], [], []
    for name in wanted:
        in_file = user in host.etc_group[name].members if name in host.etc_group else False
        in_session = session is not None and name in session
        if in_session or (session is None and in_file):
            present.append(name)
        elif in_file:
            stale.append(name)
        else:
            missing.append(name)
    parts = [f"user {user}"]
    if present:
        parts.append("in " + ", ".join(present))
    if stale:
        parts.append("added to " + ", ".join(stale) + " but this login session predates it")
    if missing:
        parts.append("not in " + ", ".join(missing))
    observed = "; ".join(parts)
    if missing:
        status = Status.FAIL if any(n != "video" for n in missing) else Status.WARN
        return Verdict(status, observed, expected, why, fixes.add_to_groups(user, missing + stale))
    if stale:
        return Verdict(
            Status.WARN,
            observed,
            expected,
            "Group changes apply to new login sessions only.",
            f"# log out and back in, or start a shell with the group: newgrp {stale[0]}",
        )
    return Verdict(Status.OK, observed, expected)


CHECKS = (
    Check("gpu", "GPU", SECTION, check_gpu),
    Check("devices", "GPU device nodes", SECTION, check_devices),
    Check("groups", "User groups", SECTION, check_groups),
)
