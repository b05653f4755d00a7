#!/usr/bin/env bash
# WebSocket conformance: the Autobahn fuzzingclient cases, run by kosoku (PyPI), against the
# echo endpoint /test/echo of a trackline built with `--features conformance-echo`.
#
#   tests/autobahn/run.sh            # every case but 12.* and 13.* (compression)
#   tests/autobahn/run.sh --all      # every case; 12.*/13.* are then UNIMPLEMENTED (accepted)
#   tests/autobahn/run.sh -i '5.*'   # some cases (kosoku's --include globs; -x to exclude)
#
# The echo runs on the same session stack and limits as the courier and watch streams (see
# services/server/src/echo_ws.rs). The frame limit is raised to 16 MiB for this run so that the
# big-message cases 9.* (up to 16 MiB) apply; with the default 256 KiB they would be refused
# with 1009, which is the limit doing its job (tested in tests/tests/e2e/limits.rs), not a
# conformance failure. Exits non-zero unless 0 cases failed; reports go to tests/autobahn/reports/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

selection=(--exclude '12.*' --exclude '13.*')
if [[ ${1:-} == --all ]]; then
    selection=()
    shift
fi
while [[ $# -gt 0 ]]; do
    case $1 in
        -i | --include) selection+=(--include "$2"); shift 2 ;;
        -x | --exclude) selection+=(--exclude "$2"); shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

started=$(date +%s)

# kosoku in a venv of its own (gitignored)
if [[ ! -x $here/.venv/bin/python ]] || ! "$here/.venv/bin/python" -c 'import kosoku' 2>/dev/null; then
    python3 -m venv "$here/.venv"
    "$here/.venv/bin/pip" install --quiet 'kosoku==0.1.0'
fi

# A target dir of its own: the feature build must not replace target/debug/trackline, which the
# other end-to-end tests start.
export CARGO_TARGET_DIR=$root/target/autobahn
cargo build --manifest-path "$root/Cargo.toml" -p trackline-server --bin trackline --features conformance-echo
bin=$CARGO_TARGET_DIR/debug/trackline

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
data=$(mktemp -d)
log=$here/server.log
TRACKLINE_MAX_FRAME_BYTES=$((16 * 1024 * 1024)) "$bin" --listen "127.0.0.1:$port" --data-dir "$data" \
    --secret autobahn >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fs "http://127.0.0.1:$port/readyz" >/dev/null || { echo "server did not start; see $log" >&2; exit 1; }

cases_started=$(date +%s)
set +e
"$here/.venv/bin/python" "$here/verdict.py" "ws://127.0.0.1:$port/test/echo" "$here/reports" "${selection[@]}"
status=$?
set -e
kill -0 $server 2>/dev/null || { echo "the server died during the run; see $log" >&2; status=1; }
echo "Autobahn: $(( $(date +%s) - cases_started )) s of cases, $(( $(date +%s) - started )) s in all (build included)"
exit $status
