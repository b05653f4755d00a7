#!/usr/bin/env bash
# Runs the cargo-fuzz targets of trackline, one after the other (one core each; see ../HOSTILE.md).
#
#   tests/fuzz/run.sh                      # every target, 10 million executions each
#   tests/fuzz/run.sh courier_frame 1000000 # one target, a million executions
#
# The one command underneath, for a single target:
#
#   cd tests/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run <target> corpus/<target> seeds/<target> -- -runs=<n>
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer=address, coverage instrumentation);
# RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them. Install it once with
# `cargo install cargo-fuzz`. Builds are release with debug assertions and overflow checks, under
# AddressSanitizer. A crash stops the run and leaves its input in artifacts/<target>/; replay it
# with `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> artifacts/<target>/crash-...` and turn it
# into a regression test.
set -euo pipefail
cd "$(dirname "$0")"

targets=(courier_frame json_bodies token)
runs=10000000
if [[ $# -ge 1 ]]; then targets=("$1"); fi
if [[ $# -ge 2 ]]; then runs=$2; fi

command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2; exit 2; }
export RUSTC_BOOTSTRAP=1
cargo fuzz build
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "seeds/$target"
    echo "== $target: $runs executions"
    start=$(date +%s)
    set +e
    cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- -runs="$runs" -print_final_stats=1 2>&1 \
        | tee "fuzz-$target.log" | grep -E '^#[0-9]+ +(DONE|pulse)|stat::|Done|panicked|SUMMARY|crash-'
    status=${PIPESTATUS[0]}
    set -e
    echo "== $target: exit $status after $(( $(date +%s) - start )) s"
    [[ $status -eq 0 ]] || exit "$status"
done
