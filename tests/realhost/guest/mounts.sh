#!/bin/sh
# The guest's own tmpfs mounts (what a host's boot mounts), keeping the
# checkout visible at its own path wherever it lives on this machine.
# Usage: mounts.sh CHECKOUT. The guest's root is this machine's root
# over 9p, so a checkout under /tmp, /run or /dev/shm would be hidden by
# the tmpfs mounted there: bind it aside first and move it back after.
set -e
co=$1
[ -d "$co" ] || { echo "mounts.sh: checkout $co not found" >&2; exit 1; }
aside=/.rh-checkout
mkdir -p "$aside"
mount --bind "$co" "$aside"
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/pts /dev/shm /run/lock /run/lvm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mkdir -p "$co"
mount --move "$aside" "$co"
rmdir "$aside"
