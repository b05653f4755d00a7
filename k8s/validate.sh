#!/usr/bin/env bash
# Validates every manifest in k8s/ offline: Kubernetes JSON schemas (strict), the kustomize
# rendering, cross-checks against the server's flags and the Dockerfile, the Grafana dashboard,
# docker-compose.yml (the local cluster) and tests/soak.sh's pass/fail rule on synthetic samples.
# No cluster needed. Installs its own tools into k8s/.venv on first run (PyPI); later runs are
# offline. Exit status non-zero on any problem.
#
#   k8s/validate.sh                      # Kubernetes 1.29 and the newest schemas shipped
#   K8S_VERSIONS=1.31,1.33 k8s/validate.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
requirements="$here/requirements.txt"
python="${PYTHON:-python3}"

# The Compose specification's JSON schema, for docker-compose.yml: docker-compose 1.x on PyPI
# ships it (compose/config/compose_spec.json). Only its wheel is downloaded, never installed (its
# dependencies are a Docker client validation does not need); validate.py reads the schema out of
# the wheel.
compose_wheel="docker-compose==1.29.2"
export TRACKLINE_COMPOSE_WHEELS="$venv/compose-spec"

# (Re)install when the venv is missing or was made from another requirements.txt or wheel pin.
stamp="$venv/.requirements.txt"
if [[ ! -x "$venv/bin/python" ]] \
    || ! cmp -s <(cat "$requirements"; echo "$compose_wheel") "$stamp"; then
    echo "installing the validation tools into $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        -r "$requirements"
    "$venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-input \
        --no-deps --only-binary=:all: -d "$TRACKLINE_COMPOSE_WHEELS" "$compose_wheel"
    { cat "$requirements"; echo "$compose_wheel"; } > "$stamp"
fi

status=0
"$venv/bin/python" "$here/validate.py" "$@" || status=$?
# tests/soak.sh's pass/fail rule on synthetic runs (stdlib only, well under a second): the soak
# itself is too long for the test command, its verdict is not.
"$venv/bin/python" "$here/../tests/soak.py" self-test || status=1
exit "$status"
