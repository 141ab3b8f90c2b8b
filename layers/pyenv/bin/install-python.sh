#!/bin/sh
# install-python.sh VERSION
# Compiles CPython VERSION with pyenv for the current user and makes it the
# global default. One RUN line of a python image:
#   RUN install-python.sh 3.13.5
# Air-gapped hosts: set PYTHON_BUILD_MIRROR_URL to a server that holds the
# source tarballs under their sha256 (python-build fetches <mirror>/<sha256>
# and verifies the checksum of its own definition either way).
# Running it again for an installed version changes nothing.
set -eu

usage() { echo "usage: install-python.sh VERSION   (e.g. 3.13.5)" >&2; exit 2; }
[ $# -eq 1 ] || usage
case "$1" in
    [0-9]*.[0-9]*) ;;
    *) echo "install-python.sh: '$1' is not a Python version" >&2; usage ;;
esac
version=$1

export PYENV_ROOT="${PYENV_ROOT:-$HOME/.pyenv}"
export PATH="$PYENV_ROOT/shims:$PYENV_ROOT/bin:$PATH"
command -v pyenv >/dev/null 2>&1 || {
    echo "install-python.sh: pyenv not found in $PYENV_ROOT" >&2; exit 1; }
if ! pyenv install --list | grep -qx "  *$version"; then
    echo "install-python.sh: pyenv $(pyenv --version | cut -d' ' -f2) has no definition" \
         "for '$version' (see: pyenv install --list)" >&2
    exit 2
fi

# A compiler cache when the image has ccache and the build gave it a folder
# (CCACHE_DIR, a cache mount): the compiler is called through ccache, and the
# build runs in a fixed folder so that the same sources give the same command
# lines (and cache hits) every time. The compiler is known by its content, not
# its file time: a reproducible image build stamps every file of a rebuilt
# layer (the compiler's too) with the build's own time.
if [ -n "${CCACHE_DIR:-}" ] && command -v ccache >/dev/null 2>&1; then
    for dir in /usr/lib/ccache /usr/lib/ccache/bin; do
        if [ -x "$dir/gcc" ]; then PATH="$dir:$PATH"; break; fi
    done
    export PYTHON_BUILD_BUILD_PATH="${PYTHON_BUILD_BUILD_PATH:-${TMPDIR:-/tmp}/python-build-$version}"
    export CCACHE_DIR CCACHE_COMPILERCHECK=content
    ccache --zero-stats >/dev/null 2>&1 || true
fi

# No test suite in the image (as the official python images, which delete it):
# a quarter of the standard library that nothing in production imports, and
# the part of `make install` that byte-compiles it. configure of versions
# before 3.10 warns about the option and goes on.
case " ${PYTHON_CONFIGURE_OPTS:-} " in
    *" --enable-test-modules "*|*" --disable-test-modules "*) ;;
    *) export PYTHON_CONFIGURE_OPTS="${PYTHON_CONFIGURE_OPTS:+$PYTHON_CONFIGURE_OPTS }--disable-test-modules" ;;
esac

# Both cores (or however many the builder has) for the compile.
export MAKE_OPTS="${MAKE_OPTS:--j$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)}"
pyenv install --skip-existing "$version"
pyenv global "$version"
pyenv rehash
python --version
if [ -n "${PYTHON_BUILD_BUILD_PATH:-}" ] && command -v ccache >/dev/null 2>&1; then
    ccache --show-stats 2>/dev/null | grep -iE 'hits|misses' || true
fi
