#!/bin/sh
# Stage 2 (PID 1 in the guest, on the overlay root): what a host's boot
# would do, then busybox init runs the control agent. Parameters come
# from the kernel command line (rh.*) and, for paths (which may hold
# spaces), from files on the guest's share /rh; both set by
# tests/realhost/vm.py, which copies this script and mounts.sh there.
arg() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
BB=/bin/busybox
/bin/sh /rh/mounts.sh "$(cat /rh/checkout)"
$BB hostname "$(arg rh.name)"
for m in virtio_net virtio_blk dm_mod dm_snapshot dm_multipath i6300esb; do
    $BB modprobe $m || echo "modprobe $m failed"
done
ip link set lo up
ip link set eth0 up
# No default route: this guest can reach 10.0.2.0/24 (qemu's user net,
# i.e. this machine's loopback at 10.0.2.2) and nothing else.
ip addr add 10.0.2.15/24 dev eth0
# LVM without udev, seeing only the shared LU.
mkdir -p /etc/lvm
cat > /etc/lvm/lvm.conf <<CONF
devices {
    filter = [ "a|^$(arg rh.lu)\$|", "r|.*|" ]
    global_filter = [ "a|^$(arg rh.lu)\$|", "r|.*|" ]
    obtain_device_list_from_udev = 0
    external_device_info_source = "none"
    use_devicesfile = 0
}
activation {
    udev_sync = 0
    udev_rules = 0
    verify_udev_operations = 0
    monitoring = 0
}
global {
    locking_dir = "/run/lock/lvm"
}
backup {
    backup = 0
    archive = 0
}
CONF
# The agent's launcher reads its paths at run time (no quoting here).
cat > /run/rh-agent <<'AGENT'
exec /usr/bin/env PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    "$(cat /rh/python)" -u "$(cat /rh/checkout)/tests/realhost/guest/agent.py"
AGENT
cat > /etc/inittab <<TAB
::respawn:/bin/sh /run/rh-agent
TAB
exec $BB init
