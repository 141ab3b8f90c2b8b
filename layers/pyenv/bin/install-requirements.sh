#!/bin/sh
# install-requirements.sh PATH/requirements.txt
# Installs a requirements file into the current user's Python (the one
# install-python.sh made global, or an active virtualenv). Fails if there is
# no Python yet.
set -eu

usage() { echo "usage: install-requirements.sh PATH/requirements.txt" >&2; exit 2; }
[ $# -eq 1 ] || usage
requirements=$1
[ -f "$requirements" ] || { echo "install-requirements.sh: no file $requirements" >&2; exit 2; }

export PYENV_ROOT="${PYENV_ROOT:-$HOME/.pyenv}"
export PATH="$PYENV_ROOT/shims:$PYENV_ROOT/bin:$PATH"
command -v python >/dev/null 2>&1 && python -c 'import sys' 2>/dev/null || {
    echo "install-requirements.sh: no Python installed; run install-python.sh first" >&2
    exit 1; }

python -m pip install --no-cache-dir --disable-pip-version-check --requirement "$requirements"
command -v pyenv >/dev/null 2>&1 && pyenv rehash  # new console scripts (flask) get shims
exit 0
