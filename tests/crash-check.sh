#!/usr/bin/env bash
# The long crash-safety run: kills the real `trackline` binary with SIGKILL at random moments while
# couriers stream fixes, restarts it on the same data dir, and checks after every restart that
# every acked fix is in history exactly once and in time order, and that every active order came
# back with its position, ETA, offset and epoch (tests/tests/e2e/crash.rs). The normal test suite
# runs the same test with 5 cycles.
#
# Usage: tests/crash-check.sh [CYCLES]     (default 20)
#        TRACKLINE_CRASH_SEED=<seed> tests/crash-check.sh [CYCLES]   replays a run (the seed is
#        printed at the start of every run)
#
# Exits non-zero on the first lost or duplicated fix, or wrong recovered state.
set -euo pipefail
cd "$(dirname "$0")/.."

cycles="${1:-20}"
if ! [[ "$cycles" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [CYCLES]  (a positive number, default 20)" >&2
    exit 2
fi

# The test spawns target/debug/trackline: build it first.
cargo build -p trackline-server --bins
TRACKLINE_CRASH_CYCLES="$cycles" cargo test -p trackline-tests --test e2e -- \
    crash::acked_fixes_and_order_state_survive_sigkill_at_random_moments --exact --nocapture
