#!/usr/bin/env bash
# halo cluster on node halo2: joins the head halo1.
# The alternative to the compose files: every model placed, watched and restarted by halo cluster
# (docs/cluster.md). Start the head first. Undo with `halo cluster stop`. --gpu-memory is the budget
# this spec planned for the node (56.00 GiB); drop it to measure the box instead.
set -euo pipefail
exec halo cluster join 192.168.1.11:6379 --name halo2 --host 192.168.1.12 --gpu-memory 57344MiB
