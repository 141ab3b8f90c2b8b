#!/bin/sh
# install-python.sh VERSION
# Builds CPython VERSION with pyenv for the current user and makes it the
# global default. Meant for one RUN line of a python image:
#   RUN /home/alpine/bin/install-python.sh 3.13.1
set -eu

usage() { echo "usage: install-python.sh VERSION   (e.g. 3.13.1)" >&2; exit 2; }
[ $# -eq 1 ] || usage
case "$1" in
    [0-9]*.[0-9]*) ;;
    *) echo "install-python.sh: '$1' is not a Python version" >&2; usage ;;
esac
version=$1

export PYENV_ROOT="${PYENV_ROOT:-$HOME/.pyenv}"
export PATH="$PYENV_ROOT/bin:$PATH"
command -v pyenv >/dev/null 2>&1 || {
    echo "install-python.sh: pyenv not found in $PYENV_ROOT" >&2; exit 1; }
eval "$(pyenv init -)"

pyenv install --skip-existing "$version"
pyenv global "$version"
python -m pip install --no-cache-dir --upgrade pip
python --version
