#!/usr/bin/env bash
# The whole Sluice test suite, on a fresh machine: formatting, lints, the
# Rust unit and integration tests (str0m peers on loopback), the browser
# end-to-end tests in headless Chromium (installed with apt-get if missing) and
# the interop test with aiortc (installed from PyPI into a virtualenv).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked

cargo build -p sluice -p sluice-loadtest --locked

if [ "${SLUICE_SKIP_BROWSER:-0}" != 1 ]; then
    step "browser end-to-end tests (headless Chromium)"
    bash tests/browser/with-server.sh bash tests/browser/run.sh

    step "browser: a viewer behind a 500 kbit/s path moves to a layer it carries"
    bash tests/browser/narrow-link.sh --check 500 30
fi

step "interop: aiortc publishes H.264 + Opus over WHIP, aiortc watches over WHEP"
bash tests/browser/with-server.sh bash tests/interop/run.sh

step "all tests passed"
