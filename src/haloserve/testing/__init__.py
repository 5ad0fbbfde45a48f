"""Test doubles and harnesses shipped with the package, shared by tests and benchmarks.

:mod:`haloserve.testing.upstream` is a fake OpenAI-compatible server: a real HTTP server with scripted
timing and failures, and no model behind it. :mod:`haloserve.testing.remote` starts a real ``halo``
process on a free port; :mod:`haloserve.testing.inproc` runs an app on a real socket in this process.
"""
