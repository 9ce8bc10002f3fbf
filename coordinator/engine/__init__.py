"""The etcd lease core: sessions, the VG lock, the seqno guard, activation
leases, membership. Imports nothing of the daemon."""
