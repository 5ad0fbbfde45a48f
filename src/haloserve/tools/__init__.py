"""Tool calling, structured output, logprobs and reasoning for ``halo serve``."""
