#!/usr/bin/env bash
# The soak: trackline under the fleet load (trackline-bench fleet: 2000 couriers, one fix per
# second each, one watcher per order) for MINUTES (default 30), with the server's RSS, data-dir
# bytes, CPU seconds and stored-fix count sampled every 30 s into a CSV and plotted into a PNG.
# It fails (exit 1, with the figures) when RSS after the warm-up grows more than 5 % or the bytes
# on disk per stored fix drift; tests/soak.py defines both rules precisely (its docstring) and
# checks them on synthetic runs (k8s/validate.sh runs that check in the test command).
#
#   tests/soak.sh            # 30 minutes, the release criterion
#   tests/soak.sh 2          # a short try of the script itself (warm-up 40 s)
#
# Not part of tests/run.sh (it takes its full length). Builds the release binaries, installs
# python3-venv (as root, from Debian) and matplotlib (PyPI, into tests/.soak-venv) when missing.
# Output: tests/soak-out/<UTC time>/{samples.csv,soak.png,verdict.txt,bench.json,bench.log}.
# Knobs (environment): SOAK_WARMUP_S (default a third of the run, at most 300), SOAK_SAMPLE_S
# (30), SOAK_COURIERS (2000), SOAK_RSS_PCT (5), SOAK_DRIFT_PCT (10), SOAK_BIN_DIR (a directory
# with trackline and trackline-bench already built: no build; the release criterion is only
# meaningful with release binaries).
set -euo pipefail
cd "$(dirname "$0")/.."

minutes="${1:-30}"
if ! [[ "$minutes" =~ ^[0-9]+$ ]] || [ "$minutes" -lt 1 ]; then
    echo "usage: tests/soak.sh [MINUTES]   (whole minutes, at least 1)" >&2
    exit 2
fi
seconds=$((minutes * 60))
# The first minutes fill sled's page cache and the allocator's arenas; growth is judged after.
warmup_s="${SOAK_WARMUP_S:-$(( seconds / 3 < 300 ? seconds / 3 : 300 ))}"
sample_s="${SOAK_SAMPLE_S:-30}"
couriers="${SOAK_COURIERS:-2000}"

# --- tools ----------------------------------------------------------------------------------
if ! python3 -c 'import ensurepip' 2>/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "tests/soak.sh: python3-venv missing; install it as root" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-venv
fi
venv=tests/.soak-venv
requirements=tests/soak-requirements.txt
# shellcheck source=tests/lib/venv.sh
. tests/lib/venv.sh
ensure_venv "$venv" "$requirements"
py="$venv/bin/python"

if [ -n "${SOAK_BIN_DIR:-}" ]; then
    bin="$(cd "$SOAK_BIN_DIR" && pwd)"
else
    cargo build --release --locked --bin trackline --bin trackline-bench
    bin="$PWD/target/release"
fi

# --- the run --------------------------------------------------------------------------------
out="tests/soak-out/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
# The bench starts and stops the server itself (its flags, its data dir). The sampler needs the
# server's pid: the bench runs this wrapper as the server binary, which writes its own pid (the
# server's, after exec) where the sampler reads it.
cat > "$out/trackline" <<EOF
#!/bin/sh
echo \$\$ > "$out/server.pid"
exec "$bin/trackline" "\$@"
EOF
chmod +x "$out/trackline"

# One descriptor per courier and per watcher.
ulimit -n "$(ulimit -Hn)" || true

echo "soak: $minutes min of the fleet load ($couriers couriers), warm-up $warmup_s s," \
     "a sample every $sample_s s, into $out"
TRACKLINE_BIN="$out/trackline" "$bin/trackline-bench" fleet \
    --peers trackline --couriers "$couriers" --seconds "$seconds" --warmup 10 \
    --long-seconds 0 --max-rate-search off --sample-every-s "$sample_s" \
    > "$out/bench.json" 2> "$out/bench.log" &
bench=$!
# The bench stops its server when it ends; a soak cut short (Ctrl-C) must not leave it running.
trap 'kill "$bench" 2>/dev/null || true' EXIT

"$py" tests/soak.py sample --pidfile "$out/server.pid" --csv "$out/samples.csv" \
    --every "$sample_s" --while-pid "$bench"
bench_status=0
wait "$bench" || bench_status=$?
trap - EXIT
if [ "$bench_status" -ne 0 ]; then
    echo "soak: trackline-bench exited with $bench_status; its log:" >&2
    tail -n 20 "$out/bench.log" >&2
fi

"$py" tests/soak.py plot --csv "$out/samples.csv" --png "$out/soak.png" --warmup-s "$warmup_s"
status=0
"$py" tests/soak.py verdict --csv "$out/samples.csv" --warmup-s "$warmup_s" \
    --rss-pct "${SOAK_RSS_PCT:-5}" --drift-pct "${SOAK_DRIFT_PCT:-10}" \
    | tee "$out/verdict.txt" || status=1
[ "$bench_status" -eq 0 ] || status=1
echo "soak: samples $out/samples.csv, plot $out/soak.png"
exit "$status"
