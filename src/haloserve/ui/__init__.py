"""The web UI: static pages served at ``/ui`` by ``halo serve`` and ``halo gateway`` (no build step)."""
