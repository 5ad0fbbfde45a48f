"""Engines: what produces tokens (the embedded llama.cpp engine and a fake one)."""
