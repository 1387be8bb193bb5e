"""Development-only tools: a local identity provider, an echo upstream, and the Envoy harness.

Nothing here is used by ``tollgate serve`` in production; the demo, the tests and the benchmarks
share it so they all run the same real components.
"""
