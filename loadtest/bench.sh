#!/usr/bin/env bash
# The benchmark record's runs (docs/benchmarks.md), each in a network
# namespace of its own: the server on core 0, the tester on core 1, count-
# only subscribers on one shared socket. Needs root (or user namespaces),
# util-linux's unshare and iproute2's ip.
#
#   bash loadtest/bench.sh [a|b|c|d|capacity ...]   (default: a b c d)
#
#   a         one simulcast publisher, 700 viewers on one core (VIEWERS=n
#             changes the count)
#   b         a 10x10 meeting on the low layer
#   c         ten audio rooms, 1,000 listeners
#   d         a join storm of 50 subscribers at once
#   e         the load of (a) from ten rooms: one simulcast publisher and
#             70 viewers each (VIEWERS_PER_ROOM=n changes the count)
#   capacity  the capacity search, one simulcast publisher, steps of 150
#
# DURATION=20s changes the measurement window; PACER_BURST_MS=0 makes the
# synthetic publishers spread each frame out instead of sending it in one
# burst (see the tester's --pacer-burst-ms); SERVER=path and TESTER=path
# run another server or tester binary (to compare two builds, run them in
# turn). Each run prints the tester's summary; JSON reports go to
# target/bench/.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${SLUICE_BENCH_IN_NETNS:-}" != 1 ]; then
    cargo build --release --locked -p sluice -p sluice-loadtest
    flags=(--net)
    [ "$(id -u)" = 0 ] || flags=(--user --map-root-user --net)
    exec env SLUICE_BENCH_IN_NETNS=1 unshare "${flags[@]}" -- bash "$0" "$@"
fi

ip link set lo up
mkdir -p target/bench
config=target/bench/bench.toml
cat > "$config" <<'EOF'
[limits]
posts_per_second_per_address = 1000.0
max_sessions_per_address = 10000
max_sessions_per_room = 10000
EOF
duration=${DURATION:-20s}
http=127.0.0.1:18100

# Run the tester with "$@" against a fresh server pinned to core 0.
run() {
    local name=$1
    shift
    taskset -c 0 "${SERVER:-target/release/sluice}" serve --config "$config" --http "$http" \
        --udp 127.0.0.1:0 > "target/bench/$name-server.log" 2>&1 &
    local server=$!
    for _ in $(seq 50); do
        curl -sf "http://$http/healthz" > /dev/null 2>&1 && break
        sleep 0.1
    done
    echo "== $name"
    taskset -c 1 "${TESTER:-target/release/sluice-loadtest}" --url "http://$http" --server-pid "$server" \
        --shared-socket --pacer-burst-ms "${PACER_BURST_MS:-40}" --json "target/bench/$name.json" \
        "$@" || true
    kill "$server"
    wait "$server" || true
}

for scenario in "${@:-a b c d}"; do
    for s in $scenario; do
        case $s in
            a) run a --room cap --publishers 1 --subscribers "${VIEWERS:-700}" --simulcast --ramp 100 \
                   --duration "$duration" ;;
            b) run b --room meet --meeting --publishers 10 --simulcast --layer q --probes 10 \
                   --ramp 50 --duration "$duration" ;;
            c) run c --room radio --rooms 10 --publishers 1 --subscribers 100 --audio-only \
                   --ramp 100 --duration "$duration" ;;
            d) run d --room storm --publishers 1 --subscribers 50 --probes 50 --duration 5s ;;
            e) run e --room multi --rooms 10 --publishers 1 --subscribers "${VIEWERS_PER_ROOM:-70}" --simulcast \
                   --ramp 100 --duration "$duration" ;;
            capacity) run capacity --room cap --publishers 1 --simulcast --find-capacity \
                   --step 150 --max-subscribers 2400 --duration 5s ;;
            *) echo "unknown scenario $s (a, b, c, d, e or capacity)" >&2; exit 2 ;;
        esac
    done
done
