"""Test doubles and harnesses shipped with the package (used by tests and benchmarks alike)."""
