#!/bin/sh
# install-requirements.sh PATH/requirements.txt
# Installs a requirements file into the user's virtual environment.
set -eu

usage() { echo "usage: install-requirements.sh PATH/requirements.txt" >&2; exit 2; }
[ $# -eq 1 ] || usage
requirements=$1
[ -f "$requirements" ] || { echo "install-requirements.sh: no file $requirements" >&2; exit 2; }
venv=${VIRTUAL_ENV:-$HOME/venv}
[ -x "$venv/bin/pip" ] || {
    echo "install-requirements.sh: no virtual environment at $venv" >&2; exit 1; }

"$venv/bin/pip" install --no-cache-dir --disable-pip-version-check --requirement "$requirements"
