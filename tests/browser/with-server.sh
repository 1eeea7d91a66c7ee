#!/usr/bin/env bash
# Start target/debug/sluice on loopback, run the given command with
# SLUICE_URL pointing at it, and stop the server afterwards (also on failure).
set -euo pipefail
cd "$(dirname "$0")/../.."

port="${SLUICE_TEST_HTTP_PORT:-18080}"
log="$(mktemp)"
target/debug/sluice serve --http "127.0.0.1:${port}" --udp 127.0.0.1:0 >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; then
        break
    fi
    sleep 0.1
done

status=0
SLUICE_URL="http://127.0.0.1:${port}" "$@" || status=$?
if [ "$status" != 0 ]; then
    echo "---- server log ----"
    tail -n 200 "$log"
fi
exit "$status"
