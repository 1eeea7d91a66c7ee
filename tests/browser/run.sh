#!/usr/bin/env bash
# Browser end-to-end test against a running Sluice server.
#   SLUICE_URL=http://127.0.0.1:8080 tests/browser/run.sh
# Installs Debian's chromium if missing, installs playwright-core (npm, no
# browser download) and runs e2e.mjs.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

: "${SLUICE_URL:?set SLUICE_URL, e.g. SLUICE_URL=http://127.0.0.1:8080}"
export SLUICE_URL

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
export CHROMIUM

if [ ! -x "$CHROMIUM" ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  if ! $SUDO apt-get install -y chromium chromium-driver; then
    $SUDO apt-get update
    $SUDO apt-get install -y chromium chromium-driver
  fi
fi

if [ -f package-lock.json ]; then
  npm ci --no-audit --no-fund --prefer-offline
else
  npm install --no-audit --no-fund
fi

exec node e2e.mjs
