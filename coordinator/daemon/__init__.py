"""The per-host service lvmcoordd: workers, operations, routing, fencing."""
