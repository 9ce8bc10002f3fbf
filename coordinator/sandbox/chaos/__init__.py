"""Chaos suite: a random workload, random faults and invariant checks
against a sandboxed lvmcoord cluster (3-member etcd, per-host proxies,
loop-backed shared VG, writers that stamp blocks like VMs).

``python -m coordinator.sandbox.chaos --seed N --duration S``; see
doc/chaos.md.
"""
