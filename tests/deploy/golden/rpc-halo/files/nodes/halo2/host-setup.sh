#!/usr/bin/env bash
# Host set-up for node halo2 (192.168.1.12), rendered by `halo deploy render`.
# Run once as a user with sudo, reboot, then `./host-setup.sh --verify` (runs `halo doctor`).
#
# Before running, in the BIOS (Advanced > AMD CBS > NBIO > GFX Configuration): set the UMA frame buffer
# to Auto / 512 MB. Memory carved out there is hidden from Linux; the GPU reaches the rest of the RAM
# through GTT up to the TTM limit set below, so a large carve-out only starves the OS.
set -euo pipefail
cd "$(dirname "$0")"

verify() {
  # halo doctor checks the GPU, the memory split, the TTM limit, groups, ROCm and RDMA.
  if command -v halo >/dev/null; then
    halo doctor
  else
    docker run --rm -v /:/host:ro haloserve-rocm:latest halo doctor --root /host
  fi
}
if [ "${1:-}" = "--verify" ]; then
  verify
  exit $?
fi

# Kernel: 6.16.9 or newer is recommended for Strix Halo's unified memory (6.15.x reportedly works).
recommended=6.16.9
current=$(uname -r | cut -d- -f1)
if [ "$(printf '%s\n' "${recommended}" "${current}" | sort -V | head -n1)" != "${recommended}" ]; then
  echo "warning: kernel ${current} is older than the recommended ${recommended}" >&2
fi

# GPU device access for the containers' user: the video and render groups.
sudo usermod -aG video,render "${USER}"

# TTM limit: the GPU may use 55.50 GiB of this node's 64.00 GiB through GTT.
# A TTM page is 4 KiB, so pages = GiB x 262144 (55.5 GiB -> 14548992 pages).
ttm_args='ttm.pages_limit=14548992 ttm.page_pool_size=14548992'
grub=/etc/default/grub
sudo cp "${grub}" "${grub}.halo-backup"
sudo sed -i -E 's/ ?ttm\.(pages_limit|page_pool_size)=[0-9]+//g' "${grub}"
sudo sed -i -E "s/^(GRUB_CMDLINE_LINUX_DEFAULT=\"[^\"]*)\"/\1 ${ttm_args}\"/" "${grub}"
grep '^GRUB_CMDLINE_LINUX_DEFAULT' "${grub}"
if command -v update-grub >/dev/null; then
  sudo update-grub
else
  sudo grub2-mkconfig -o /boot/grub2/grub.cfg
fi
# Without GRUB (systemd-boot, ...), the same limit as a module option:
#   echo 'options ttm pages_limit=14548992 page_pool_size=14548992' | sudo tee /etc/modprobe.d/ttm.conf

# RDMA network: enp1s0f0np0 at 10.0.1.2/24 with MTU 9000. Every port and switch on the path
# needs the same jumbo MTU, or RoCE drops packets and NCCL/RCCL stalls (RoCE itself uses 4096-byte frames).
sudo install -m 600 60-halo-rdma.yaml /etc/netplan/60-halo-rdma.yaml
sudo netplan apply
# RDMA pins memory: lift the memlock limit for logins (containers get --ulimit memlock=-1).
printf '%s\n' '* soft memlock unlimited' '* hard memlock unlimited' \
  | sudo tee /etc/security/limits.d/90-halo-rdma.conf >/dev/null
# ECN for RoCE (run once per boot, or from a systemd unit); note `sudo echo ... >` would fail:
#   echo 1 | sudo tee /sys/class/net/enp1s0f0np0/ecn/roce_np/enable/3
#   echo 1 | sudo tee /sys/class/net/enp1s0f0np0/ecn/roce_rp/enable/3

echo "done: reboot, then run $0 --verify"
