#!/usr/bin/env bash
# GET /openapi.json judged by tools that share no code with the server: openapi-spec-validator
# checks the document against the OpenAPI 3.1 specification, then schemathesis tests the live
# server from it (property-based: generated requests, valid and invalid, on every operation) with
# an ops token. A run fails on any 5xx, an answer whose status, content type or body the
# document does not describe.
#
#   tests/openapi/check.sh        # the short run of the test command (tests/run.sh)
#   tests/openapi/check.sh 500    # a long run: up to 500 generated cases per operation
#
# Uses target/debug/trackline and target/debug/trackctl (build them first), and python3 with
# venv; installs the pinned tools (tests/openapi/requirements.txt) from PyPI into
# tests/openapi/.venv on the first run. Knobs (environment): OPENAPI_SEED (a fixed seed for a
# reproducible run; random otherwise), OPENAPI_MAX_TIME_S (a time budget for the whole run).
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"

examples="${1:-12}"
if ! [[ "$examples" =~ ^[0-9]+$ ]] || [ "$examples" -lt 1 ]; then
    echo "usage: tests/openapi/check.sh [EXAMPLES_PER_OPERATION]" >&2
    exit 2
fi
for bin in target/debug/trackline target/debug/trackctl; do
    if [ ! -x "$bin" ]; then
        echo "tests/openapi/check.sh: $bin missing; run cargo build first" >&2
        exit 1
    fi
done

venv=tests/openapi/.venv
requirements=tests/openapi/requirements.txt
# shellcheck source=tests/lib/venv.sh
. tests/lib/venv.sh
ensure_venv "$venv" "$requirements"

work="$(mktemp -d)"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# A free port: bound and released at once (the server binds it right after).
port="$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"
export TRACKLINE_SECRET="openapi-check-$RANDOM$RANDOM"
RUST_LOG=warn target/debug/trackline --listen "127.0.0.1:$port" --data-dir "$work/data" \
    >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
    curl -fsS "$base/healthz" >/dev/null 2>&1 && break
    if ! kill -0 "$server_pid" 2>/dev/null; then
        cat "$work/server.log" >&2
        echo "tests/openapi/check.sh: the server did not start" >&2
        exit 1
    fi
    sleep 0.1
done
curl -fsS "$base/openapi.json" -o "$work/openapi.json"

status=0
echo "openapi: validating $base/openapi.json (openapi-spec-validator)"
"$venv/bin/openapi-spec-validator" "$work/openapi.json" || status=$?

token="$(target/debug/trackctl token ops --ttl 2h)"
# Some orders to find: generated ids rarely hit one, so the operations on an existing order would
# otherwise only ever answer 404.
for order in o-1 o-2; do
    curl -fsS -o /dev/null -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        -d "{\"order_id\":\"$order\",\"destination\":{\"lat\":45.0,\"lon\":13.0},\"courier_id\":\"c-1\"}" \
        "$base/v1/orders"
done

seed=()
[ -n "${OPENAPI_SEED:-}" ] && seed=(--seed "$OPENAPI_SEED")
max_time=()
[ -n "${OPENAPI_MAX_TIME_S:-}" ] && max_time=(--max-time "$OPENAPI_MAX_TIME_S")
# judge CONFIG_FILE [RUN_OPTIONS...]: one schemathesis run ("" for no config file). One worker:
# the coverage phase of two raced in CPython 3.11's parser (a schemathesis runtime error, not a
# finding).
judge() {
    local config=()
    [ -n "$1" ] && config=(--config-file "$1")
    shift
    # from the temporary dir: schemathesis keeps a cache of its findings in the current directory
    (cd "$work" && "$root/$venv/bin/schemathesis" "${config[@]}" run openapi.json --url "$base" \
        -H "Authorization: Bearer $token" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
        --max-examples "$examples" --workers 1 --no-color --output-truncate true \
        --generation-database none --report-dir report "${seed[@]}" "${max_time[@]}" "$@")
}
echo "openapi: schemathesis, every operation, up to $examples cases each"
judge "" || status=$?
# Then an order with a courier's stored fixes, a live position and an ETA, so that the answers
# that carry them (history in each format, the order's state) are judged too: the second pass
# asks the operations of one order about this one alone. Made after the first pass, whose
# purges would have removed its fixes.
target/debug/trackctl --server "$base" simulate --random 45.0,13.0 --speedup 500 --rate 1 \
    --order-prefix o-sim- --courier-prefix c-sim- >"$work/simulate.log" 2>&1 \
    || { cat "$work/simulate.log" >&2; exit 1; }
printf '[parameters]\n"path.id" = "o-sim-1"\n' >"$work/one-order.toml"

echo "openapi: schemathesis, the operations of one order with fixes, up to $examples cases each"
judge "$work/one-order.toml" --include-path-regex '\{id\}' || status=$?

if [ "$status" -ne 0 ]; then
    echo "--- server log (last 40 lines)" >&2
    tail -n 40 "$work/server.log" >&2
fi
exit "$status"
