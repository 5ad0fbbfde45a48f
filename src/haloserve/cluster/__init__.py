"""``halo cluster``: several boxes as one serving cluster on Ray (membership, deployments, replicas).

Pure parts (node memory arithmetic, placement, command lines) import no Ray; the Ray parts
(:mod:`controller`, :mod:`replica`, :mod:`client`) are imported only by code that runs with Ray installed.
"""

NAMESPACE = "haloserve"
"""The Ray namespace of every named actor halo creates."""

CONTROLLER_NAME = "halo-controller"
"""The detached controller actor's name in :data:`NAMESPACE`."""

MEMORY_RESOURCE = "halo_gpu_mib"
"""Ray custom resource: usable GPU memory of a node in MiB (one unit = 1 MiB)."""

NODE_RESOURCE_PREFIX = "halo_node_"
"""Ray custom resource ``halo_node_<name>`` (1000 units) that names a node, so bundles can be pinned."""

NODE_PIN = 0.001
"""How much of ``halo_node_<name>`` one bundle takes (1000 bundles per node at most)."""
