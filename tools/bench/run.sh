#!/usr/bin/env bash
# The one command for the benchmarks: installs the peers (NATS, Mosquitto, Redis from Debian's
# packages), builds trackline and the load generator in release, runs every scenario against
# every peer (median of 3 runs), and writes tools/bench/report.json and BENCHMARKS.md.
#
#   tools/bench/run.sh              # the full run (about 55 minutes on 2 cores, 35-40 of them
#                                   # the fleet scenario)
#   tools/bench/run.sh --quick      # a small smoke run (a few minutes), 1 run each; writes to /tmp
#   tools/bench/run.sh [args...]    # anything else is passed to `trackline-bench all`
#
# Traffic goes to 127.0.0.0/8 only; every load is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
if [ -z "${BENCH_SKIP_INSTALL:-}" ]; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  for pkg in nats-server mosquitto redis-server; do
    # A peer Debian cannot provide is reported as unavailable in BENCHMARKS.md, not faked.
    policy="$(apt-cache policy "$pkg" 2>/dev/null || true)"
    if [[ "$policy" == *"Candidate: "[0-9]* ]]; then
      $SUDO apt-get install -y -q "$pkg" >/dev/null || echo "could not install $pkg" >&2
    else
      echo "no Debian package $pkg" >&2
    fi
  done
  # The packages may start system services on the default ports; the bench uses its own
  # (18180-18186) and starts its own instances.
fi

cargo build --release --bin trackline --bin trackline-bench

# The descriptor limit bounds the idle-connection scenario: raise the soft limit to the hard one.
ulimit -n "$(ulimit -Hn)" || true

if [ "${1:-}" = "--quick" ]; then
  shift
  exec target/release/trackline-bench all --runs 1 --couriers 20 --seconds 2 --warmup 1 \
    --idle 2000 --nearby-couriers 5000 --nearby-queries 200 --restart-orders 2000 \
    --fleet-couriers 200 --fleet-seconds 20 --fleet-warmup 2 --fleet-long-seconds 0 \
    --fleet-sample-every-s 5 --fleet-search-rates 200,400 --fleet-search-seconds 5 \
    --fleet-search-warmup 2 --fleet-search-bisect 0 \
    --out /tmp/trackline-bench-quick.json --md /tmp/trackline-bench-quick.md \
    --command "tools/bench/run.sh --quick" "$@"
fi
exec target/release/trackline-bench all --runs 3 --command "tools/bench/run.sh" "$@"
