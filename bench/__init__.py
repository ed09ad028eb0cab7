"""Benchmarks of the platform, and the closed-loop load generator
(bench/loadgen.py) that both they and the fault tests (tests/fault_load.py)
send their load with, so that a benchmark figure and a fault test's latency
are measured the same way. Nothing under deployments/ or apps/ imports it.
"""
