"""lvmcoord: etcd-backed locks and activation leases for LVM on a shared LU."""
