#!/usr/bin/env bash
# Validates every manifest in k8s/ offline: Kubernetes JSON schemas (strict), the kustomize
# rendering, cross-checks against the server's flags and the Dockerfile, and the Grafana dashboard.
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

# (Re)install when the venv is missing or was made from another requirements.txt.
stamp="$venv/.requirements.txt"
if [[ ! -x "$venv/bin/python" ]] || ! cmp -s "$requirements" "$stamp"; then
    echo "installing the validation tools into $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        -r "$requirements"
    cp "$requirements" "$stamp"
fi

exec "$venv/bin/python" "$here/validate.py" "$@"
