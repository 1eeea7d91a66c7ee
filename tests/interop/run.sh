#!/usr/bin/env bash
# Interop test: aiortc publishes over WHIP and watches over WHEP through a
# running Sluice at $SLUICE_URL (see tests/browser/with-server.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"

: "${SLUICE_URL:?SLUICE_URL must point at a running sluice server}"

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check \
    aiortc==1.16.0 aiohttp==3.14.5 numpy==2.4.6

exec "$venv/bin/python" "$here/aiortc_interop.py"
