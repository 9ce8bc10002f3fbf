#!/usr/bin/env bash
# make test: two pytest runs side by side. The real-kernel tier spends most
# of its time waiting out session TTLs in its guests, the rest of the suite
# waits on its own sandbox TTLs; run one after the other they took 35 min.
# Each stream's output goes to its log; both are printed, the tier's last.
# Exit status: non-zero if either stream failed.
set -u
# Job control: background jobs keep SIGINT (pytest's clean stop), which
# a shell without it ignores for them; stop() forwards it.
set -m
PYTHON=${PYTHON:-python3}
out=$(mktemp -d /tmp/lvmcoord-streams.XXXXXX)
tier_pid=''
rest_pid=''
stop() {
    # pytest tears its fixtures down on SIGINT (guests, etcd, loop devices).
    for pid in "$tier_pid" "$rest_pid"; do
        [ -n "$pid" ] && kill -INT "$pid" 2>/dev/null
    done
    wait
    exit 130
}
trap stop INT TERM

LVMCOORD_REALHOST=1 "$PYTHON" -m pytest -q -p no:cacheprovider tests/realhost \
    "$@" >"$out/tier.log" 2>&1 &
tier_pid=$!

"$PYTHON" -m pytest -q -p no:cacheprovider tests --ignore=tests/realhost \
    "$@" &
rest_pid=$!
wait "$rest_pid"
rest=$?
rest_pid=''

wait "$tier_pid"
tier=$?
tier_pid=''
echo
echo "==== the real-kernel tier (tests/realhost), run alongside ===="
cat "$out/tier.log"
rm -rf "$out"
echo "==== suite: rest rc=$rest, tier rc=$tier ===="
[ "$rest" -eq 0 ] && [ "$tier" -eq 0 ]
