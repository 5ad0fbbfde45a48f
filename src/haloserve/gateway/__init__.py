"""``halo gateway``: an LLM-aware load balancer with keys, quotas and usage accounting."""
