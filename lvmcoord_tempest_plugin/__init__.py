"""Tempest plugin for lvmcoord: multi-node tests on the shared VG."""
