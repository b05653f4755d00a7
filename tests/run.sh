#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine: installs what the tests need that cargo
# cannot (none yet beyond the Rust toolchain), builds, and runs unit and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# Tests use only ports on 127.0.0.1 and temporary directories; a test run never needs ../shared.
export RUST_BACKTRACE=1
cargo build --workspace --all-targets --locked
cargo test --workspace --locked --no-fail-fast
