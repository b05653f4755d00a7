#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine: installs what the tests need that cargo
# cannot (Debian's chromium and chromium-driver, and the browser tests' npm packages), builds,
# and runs unit, end-to-end and browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# Tests use only ports on 127.0.0.1 and temporary directories; a test run never needs ../shared.
export RUST_BACKTRACE=1

# Headless Chromium for the browser tests, from Debian (never a browser download at run time).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "tests/run.sh: chromium and chromium-driver are missing; install them as root (apt-get install chromium chromium-driver)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q chromium chromium-driver
fi
# The browser tests' packages (playwright-core, ws, protobufjs, leaflet), exactly as locked.
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

cargo build --workspace --all-targets --locked
status=0
cargo test --workspace --locked --no-fail-fast || status=$?

# Browser tests: the real server binary (target/debug/trackline) and trackctl, headless Chromium
# driven by playwright-core. Screenshots go to tests/artifacts/ (not committed).
(cd tests/browser && node --test --test-concurrency=1 test/) || status=$?
exit "$status"
