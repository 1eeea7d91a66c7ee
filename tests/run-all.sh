#!/usr/bin/env bash
# The whole Sluice test suite, on a fresh machine: formatting, lints, the
# Rust unit and integration tests (str0m peers on loopback), and the browser
# end-to-end tests in headless Chromium (installed with apt-get if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked

if [ "${SLUICE_SKIP_BROWSER:-0}" != 1 ]; then
    step "browser end-to-end tests"
    cargo build -p sluice --locked
    bash tests/browser/with-server.sh bash tests/browser/run.sh
fi

step "all tests passed"
