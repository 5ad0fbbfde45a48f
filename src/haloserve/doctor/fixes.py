"""Pasteable fixes, written for the distribution family found under the root.

Doctor never runs them. Privileged writes use ``echo ... | sudo tee`` (errata 6: ``sudo echo > file``
fails for a normal user because the shell, not sudo, opens the file).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

# Package names per family for the things doctor may ask to install.
_PACKAGES: dict[str, dict[str, str]] = {
    "radv": {"debian": "mesa-vulkan-drivers", "fedora": "mesa-vulkan-drivers", "arch": "vulkan-radeon"},
}
_INSTALL = {
    "debian": "sudo apt install {pkg}",
    "fedora": "sudo dnf install {pkg}",
    "arch": "sudo pacman -S {pkg}",
}


def kernel_args(distro: str, add: Sequence[str], topic: str, remove: Sequence[str] = ()) -> str:
    """Commands that put ``add`` on the kernel command line for good (and drop ``remove`` keys).

    Debian/Ubuntu get a ``/etc/default/grub.d`` drop-in (sourced after ``/etc/default/grub``),
    Fedora gets ``grubby`` (which replaces existing values of the same key), others the GRUB line.
    """
    args = " ".join(add)
    if distro == "fedora":
        lines = [f'sudo grubby --update-kernel=ALL --args="{args}"']
        if remove:
            lines.insert(0, f'sudo grubby --update-kernel=ALL --remove-args="{" ".join(remove)}"')
        lines.append("sudo reboot")
        return "\n".join(lines)
    line = f'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT {args}"'
    if distro == "debian":
        out = [
            f"echo {shlex.quote(line)} | sudo tee /etc/default/grub.d/90-haloserve-{topic}.cfg",
            "sudo update-grub && sudo reboot",
        ]
        if remove:
            out.insert(
                0, f"# first delete any {', '.join(remove)} from /etc/default/grub (the last value wins)"
            )
        return "\n".join(out)
    out = [
        f"# in /etc/default/grub, append to GRUB_CMDLINE_LINUX_DEFAULT:  {args}",
        "sudoedit /etc/default/grub",
        "sudo grub-mkconfig -o /boot/grub/grub.cfg && sudo reboot",
    ]
    if remove:
        out[0] += f"   (and delete {', '.join(remove)})"
    return "\n".join(out)


def install(distro: str, what: str) -> str:
    """The install command for a known package role (``radv``) on this distribution family."""
    names = _PACKAGES[what]
    if distro in _INSTALL:
        return _INSTALL[distro].format(pkg=names[distro])
    return "\n".join(f"{_INSTALL[d].format(pkg=names[d])}   # {d}" for d in ("debian", "fedora", "arch"))


def tee(value: str, *paths: str) -> str:
    """``echo VALUE | sudo tee PATH...`` (the redirect a normal user can actually perform)."""
    return f"echo {shlex.quote(value)} | sudo tee {' '.join(shlex.quote(p) for p in paths)}"


def add_to_groups(user: str | None, groups: Sequence[str]) -> str:
    """``usermod`` for the groups, then how to make the new groups apply."""
    who = shlex.quote(user) if user else "$USER"
    first = groups[0] if groups else "render"
    return (
        f"sudo usermod -aG {','.join(groups)} {who}\n"
        f"# then log out and back in (or run `newgrp {first}` in this shell)"
    )
