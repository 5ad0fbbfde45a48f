"""Test doubles that implement real interfaces, shared by tests and benchmarks.

:mod:`haloserve.testing.upstream` is a fake OpenAI-compatible server: a real HTTP server with scripted
timing and failures, and no model behind it.
"""
