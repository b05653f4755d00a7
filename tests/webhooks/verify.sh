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
# The server runs as a child of the Python check, which stops it however the check ends.
"$venv/bin/python" - "$bin" <<'PY'
import http.server, json, os, queue, random, socket, subprocess, sys, tempfile, threading, time
import urllib.error, urllib.request
from standardwebhooks import Webhook, WebhookVerificationError

bin_dir = sys.argv[1]
work = tempfile.TemporaryDirectory()
env = dict(os.environ, TRACKLINE_SECRET=f"webhooks-verify-{random.getrandbits(64):x}")
probe = socket.socket()
probe.bind(("127.0.0.1", 0))
port = probe.getsockname()[1]
probe.close()
base = f"http://127.0.0.1:{port}"
log = open(os.path.join(work.name, "server.log"), "w+")
server = subprocess.Popen([f"{bin_dir}/trackline", "--listen", f"127.0.0.1:{port}",
                           "--data-dir", os.path.join(work.name, "data")],
                          env=env, stdout=log, stderr=subprocess.STDOUT)
ops = subprocess.run([f"{bin_dir}/trackctl", "token", "ops"], env=env, check=True,
                     capture_output=True, text=True).stdout.strip()
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

def ready():
    try:
        return urllib.request.urlopen(f"{base}/readyz", timeout=1).status == 200
    except (OSError, urllib.error.HTTPError):
        return False

def check():
    deadline = time.monotonic() + 10
    while not ready():
        assert time.monotonic() < deadline, "the server did not become ready within 10 s"
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
        raise AssertionError("a tampered body verified")
    except WebhookVerificationError:
        pass
    print(f"webhooks/verify: {headers['webhook-id']} verified by standardwebhooks; a tampered body did not")

try:
    check()
except Exception:
    log.seek(0)
    print("webhooks/verify: FAILED; server log tail:", *log.readlines()[-20:], sep="\n", file=sys.stderr)
    raise
finally:
    server.kill()
    server.wait()
PY
