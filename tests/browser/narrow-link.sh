#!/usr/bin/env bash
# Watch a Chromium viewer behind a narrow path (docs/benchmarks.md, "A
# viewer behind a narrow link"): in a network namespace of its own, the
# server's outgoing media (UDP from port 50000) goes through an HTB class
# of KBPS kbit/s with a 40-packet queue; publisher and viewer are Chromium
# pages (a veth address in the namespace gives Chromium a host candidate).
# A measurement tool; with --check also a test (tests/run-all.sh): it fails
# unless the viewer ends on a layer that fits and decodes steadily.
#
#   bash tests/browser/narrow-link.sh [--check] [KBPS] [SECONDS]   (default 700 50)
#
# Runs the debug server build (cargo build -p sluice first) unless SERVER
# names another binary. Needs util-linux's unshare, iproute2 and the
# browser test's node modules (bash tests/browser/run.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/../.."
check=0
if [ "${1:-}" = --check ]; then
    check=1
    shift
fi
kbps=${1:-700}
seconds=${2:-50}
if [ "${SLUICE_NARROW_IN_NETNS:-}" != 1 ]; then
    flags=(--net)
    [ "$(id -u)" = 0 ] || flags=(--user --map-root-user --net)
    exec env SLUICE_NARROW_IN_NETNS=1 CHECK="$check" unshare "${flags[@]}" -- bash "$0" "$kbps" "$seconds"
fi
ip link set lo up
ip link add v0 type veth peer name v1
ip addr add 10.77.0.1/24 dev v0
ip link set v0 up
ip link set v1 up
tc qdisc add dev lo root handle 1: htb default 10 2> /dev/null
tc class add dev lo parent 1: classid 1:10 htb rate 10gbit 2> /dev/null
tc class add dev lo parent 1: classid 1:20 htb rate "${kbps}kbit" ceil "${kbps}kbit"
tc qdisc add dev lo parent 1:20 handle 20: pfifo limit 40
tc filter add dev lo parent 1: protocol ip u32 match ip sport 50000 0xffff flowid 1:20
"${SERVER:-target/debug/sluice}" serve --http 127.0.0.1:18400 --udp 127.0.0.1:50000 \
    > target/narrow-link-server.log 2>&1 &
server=$!
trap 'kill $server 2> /dev/null || true' EXIT
sleep 1
status=0
BASE=http://127.0.0.1:18400 SECONDS_TO_WATCH="$seconds" node tests/browser/narrow-link.mjs || status=$?
curl -s http://127.0.0.1:18400/metrics | grep -E '^sluice_(bandwidth_estimate_bps_count|layer_switches_total)'
if [ "$status" != 0 ]; then
    echo "---- server log ----"
    tail -n 100 target/narrow-link-server.log
fi
exit "$status"
