"""The HTTP server of one node."""
