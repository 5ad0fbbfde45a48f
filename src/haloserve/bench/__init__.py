"""``halo bench``: load generation, vLLM-defined serving metrics, reports and plots."""
