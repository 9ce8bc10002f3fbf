"""Cinder volume driver and os-brick connector for lvmcoord: thin clients
of the local lvmcoordd."""
