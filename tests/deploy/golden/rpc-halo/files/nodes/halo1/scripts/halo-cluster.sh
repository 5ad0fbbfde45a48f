#!/usr/bin/env bash
# halo cluster on node halo1: the head (Ray head, controller, halo gateway).
# The alternative to the compose files: every model placed, watched and restarted by halo cluster
# (docs/cluster.md). Start the head first. Undo with `halo cluster stop`. --gpu-memory is the budget
# this spec planned for the node (120.00 GiB); drop it to measure the box instead.
set -euo pipefail
exec halo cluster start --name halo1 --host 192.168.1.11 --gpu-memory 122880MiB --gateway-host 0.0.0.0 --gateway-port 8000
