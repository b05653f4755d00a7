# Sourced by the test scripts that need Python packages from PyPI.
#
#   ensure_venv VENV REQUIREMENTS   makes VENV (python3 -m venv, or $PYTHON) with exactly the pins
#                                   of REQUIREMENTS, reinstalling when the pins changed since.
#
# The requirements file is copied into the venv as its stamp, so a changed pin is a fresh venv
# rather than an upgrade over whatever was there.
ensure_venv() {
    local venv="$1" requirements="$2"
    if [[ ! -x "$venv/bin/python" ]] || ! cmp -s "$requirements" "$venv/.requirements.txt"; then
        echo "installing $(grep -c '==' "$requirements") pinned packages into $venv"
        rm -rf "$venv"
        "${PYTHON:-python3}" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
            -r "$requirements"
        cp "$requirements" "$venv/.requirements.txt"
    fi
}
