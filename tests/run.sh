#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine: installs what the tests need that cargo
# cannot (Debian's chromium, chromium-driver, nats-server and python3-venv, and the browser tests'
# npm packages), validates the Kubernetes manifests and docker-compose.yml, builds, runs unit,
# end-to-end (single-node and broker mode), browser and JavaScript watcher (clients/js) tests and
# the Python courier example, builds and runs the image with buildah (tests/image.sh, which
# installs buildah and debootstrap), judges GET /openapi.json with openapi-spec-validator and
# schemathesis (tests/openapi/check.sh), and checks formatting, clippy's lints and the
# dependencies' licences and sources (cargo-deny, deny.toml).
set -euo pipefail
cd "$(dirname "$0")/.."

# Tests use only ports on 127.0.0.1 and temporary directories; a test run never needs ../shared.
export RUST_BACKTRACE=1

# From Debian, never a download at run time:
#   chromium, chromium-driver  headless Chromium for the browser tests;
#   nats-server                the broker for the multi-process (broker mode) tests, which start
#                              their own servers on loopback;
#   python3-venv               k8s/validate.sh, tests/python-courier.sh and tests/openapi/check.sh
#                              build their venvs with it (Debian's python3 lacks ensurepip
#                              without it);
#   curl                       tests/openapi/check.sh talks to the server it starts with it.
# Debian installs nats-server into /usr/sbin, which a regular user's PATH lacks.
case ":$PATH:" in *:/usr/sbin:*) ;; *) export PATH="$PATH:/usr/sbin" ;; esac
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v nats-server >/dev/null || missing+=(nats-server)
command -v curl >/dev/null || missing+=(curl)
if ! command -v python3 >/dev/null; then
    missing+=(python3 python3-venv)
elif ! python3 -c 'import ensurepip' 2>/dev/null; then
    missing+=(python3-venv)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "tests/run.sh: ${missing[*]} missing; install as root (apt-get install ${missing[*]})" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${missing[@]}"
fi
# The browser tests' packages (playwright-core, ws, protobufjs, leaflet), exactly as locked.
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

status=0
# The Kubernetes manifests against the API schemas and against the server's flags and metrics
# (k8s/README.md). The first run installs kubernetes-validate from PyPI into k8s/.venv.
k8s/validate.sh || status=$?

# One build per run: incremental caches would only add gigabytes of disk (a CI machine's disk is
# small), so they are off unless the caller asks for them.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
df -h . | sed 's/^/disk before build: /'
cargo build --workspace --all-targets --locked
df -h . | sed 's/^/disk after build: /'
cargo test --workspace --locked --no-fail-fast || status=$?
# GET /openapi.json judged by independent tools against the debug server just built: the OpenAPI
# 3.1 validator, then a short schemathesis run (no 5xx, every status, content type and body as
# documented). The first run installs both from PyPI into tests/openapi/.venv.
tests/openapi/check.sh || status=$?

# The image: k8s/Dockerfile built daemonless with buildah on locally made bases, then run (the
# server as uid 10001, trackctl; tests/image.sh says what is and is not covered). It needs root
# for debootstrap and chroot isolation; k8s/validate.sh checks the Dockerfile statically either way.
if [ "$(id -u)" -eq 0 ]; then
    tests/image.sh || status=$?
else
    echo "tests/run.sh: not root; the image NOT built (tests/image.sh)" >&2
fi

# Style is checked like behaviour: formatting, and clippy with every warning an error (after the
# tests, so that a lint never hides what the tests would have said). Both come with rustup's
# default toolchain; a toolchain without them is said loudly rather than failing the tests.
if cargo fmt --version >/dev/null 2>&1; then
    cargo fmt --all --check || status=$?
else
    echo "tests/run.sh: rustfmt is not installed; formatting NOT checked" >&2
fi
if cargo clippy --version >/dev/null 2>&1; then
    cargo clippy --workspace --all-targets --locked -- -D warnings || status=$?
else
    echo "tests/run.sh: clippy is not installed; lints NOT checked" >&2
fi

# The dependencies' licences, banned crates and sources against deny.toml (which says why each
# licence is allowed), with cargo-deny from crates.io, built once into target/tools.
cargo_deny=target/tools/bin/cargo-deny
if [ ! -x "$cargo_deny" ]; then
    cargo install --locked --quiet cargo-deny@0.20.2 --root target/tools || status=$?
fi
if [ -x "$cargo_deny" ]; then
    "$cargo_deny" check licenses bans sources || status=$?
fi

# The protocol docs' Python courier (proto/examples/courier.py) against the real server binary;
# the first run installs its pinned PyPI packages into tests/.courier-venv.
tests/python-courier.sh || status=$?
# A real webhook delivery verified by the Standard Webhooks reference library (PyPI, pinned in
# tests/webhooks/requirements.txt, installed into tests/.webhooks-venv on the first run).
tests/webhooks/verify.sh || status=$?

# Browser tests: the real server binary (target/debug/trackline) and trackctl, headless Chromium
# driven by playwright-core. Screenshots go to tests/artifacts/ (not committed).
# --test-force-exit: a failed test may leave a watcher reconnecting; report it and end instead
# of waiting for it forever.
(cd tests/browser && node --test --test-force-exit --test-concurrency=1 test/) || status=$?
# The JavaScript watcher (clients/js) against the same binaries, with the browser tests' packages.
(cd clients/js && node --test --test-force-exit --test-concurrency=1 test/) || status=$?
exit "$status"
