#!/bin/sh
# Usage: greet.sh NAME
[ $# -eq 1 ] || { echo "usage: greet.sh NAME" >&2; exit 2; }
echo "hello from $1"
