#!/usr/bin/env bash
# Checks the server's webhook signatures with an independent implementation: the Standard
# Webhooks reference library from PyPI (pinned in tests/webhooks/requirements.txt, installed into
# tests/.webhooks-venv on first run). A Python receiver takes a real delivery from the real
# server binary and verifies it with `standardwebhooks.Webhook(secret).verify`; the same
# delivery with one byte of its body changed must fail to verify. Needs target/debug/trackline
# and target/debug/trackctl built. Exit status non-zero on any failure.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$root/tests/.webhooks-venv"
bin="$root/target/debug"

# shellcheck source=tests/lib/venv.sh
. "$root/tests/lib/venv.sh"
ensure_venv "$venv" "$root/tests/webhooks/requirements.txt"
py="$venv/bin/python"

work="$(mktemp -d)"
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

export TRACKLINE_SECRET="webhooks-verify-$RANDOM$RANDOM"
port="$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$bin/trackline" --listen "127.0.0.1:$port" --data-dir "$work/data" >"$work/server.log" 2>&1 &
server_pid=$!
ops="$("$bin/trackctl" token ops)"

"$py" - "http://127.0.0.1:$port" "$ops" <<'PY' || { echo "webhooks/verify: FAILED" >&2; tail -n 20 "$work/server.log" >&2; exit 1; }
import http.server, json, queue, sys, threading, time, urllib.error, urllib.request
from standardwebhooks import Webhook, WebhookVerificationError

base, ops = sys.argv[1:]
deliveries = queue.Queue()

class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        deliveries.put((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()
    def log_message(self, *args):
        pass

receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
threading.Thread(target=receiver.serve_forever, daemon=True).start()

def call(path, body):
    request = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {ops}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        return answer.status, json.load(answer)

for _ in range(100):
    try:
        urllib.request.urlopen(f"{base}/readyz", timeout=1)
        break
    except (OSError, urllib.error.HTTPError):
        time.sleep(0.1)
# No secret given: the server generates one, and this answer is the only one that shows it.
status, hook = call("/v1/webhooks", {"url": f"http://127.0.0.1:{receiver.server_port}/hook",
                                     "events": ["order.created"]})
assert status == 201 and hook["secret"].startswith("whsec_"), hook
status, _ = call("/v1/orders", {"order_id": "verify-1", "destination": {"lat": 62.61, "lon": 29.76}})
assert status == 201

headers, body = deliveries.get(timeout=30)
event = Webhook(hook["secret"]).verify(body, headers)
assert event["type"] == "order.created" and event["data"]["order_id"] == "verify-1", event
tampered = body.replace(b"verify-1", b"verify-2")
try:
    Webhook(hook["secret"]).verify(tampered, headers)
    raise SystemExit("a tampered body verified")
except WebhookVerificationError:
    pass
print(f"webhooks/verify: {headers['webhook-id']} verified by standardwebhooks; a tampered body did not")
PY
