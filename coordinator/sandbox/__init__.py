"""A whole lvmcoord cluster on one machine: private etcd on 127.0.0.1,
a loop-backed shared VG seen by simulated hosts, and their daemons.

Used by the demo (``lvmcoord-demo``) and by the functional tests. Nothing
here touches a device it did not create.
"""
