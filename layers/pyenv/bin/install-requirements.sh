#!/bin/sh
# install-requirements.sh PATH/requirements.txt
# Installs a requirements file into the current user's Python (the one
# install-python.sh made global). Fails if there is no Python yet.
set -eu

usage() { echo "usage: install-requirements.sh PATH/requirements.txt" >&2; exit 2; }
[ $# -eq 1 ] || usage
requirements=$1
[ -f "$requirements" ] || { echo "install-requirements.sh: no file $requirements" >&2; exit 2; }

export PYENV_ROOT="${PYENV_ROOT:-$HOME/.pyenv}"
export PATH="$PYENV_ROOT/bin:$PATH"
if command -v pyenv >/dev/null 2>&1; then
    eval "$(pyenv init -)"
fi
command -v python >/dev/null 2>&1 || {
    echo "install-requirements.sh: no Python installed; run install-python.sh first" >&2
    exit 1; }

python -m pip install --no-cache-dir --requirement "$requirements"
