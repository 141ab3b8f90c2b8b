"""Durations and sizes as users write them: "90s", "15m", "6h", "7d", "1h30m";
"64M", "512KiB", "2G". Pure."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str) -> float:
    """Seconds; raises ValueError with the accepted form in the message."""
    cleaned = text.strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    for match in _PART.finditer(cleaned):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not cleaned or pos != len(cleaned):
        raise ValueError(f"bad duration {text!r}: use a number and a unit, e.g. 90s, 15m, 6h, 7d")
    return total


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)$")
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes; units are powers of 1024 ("64M" = "64MiB" = 64 * 2**20)."""
    match = _SIZE.match(text.strip().lower())
    if not match:
        raise ValueError(f"bad size {text!r}: use a number and a unit, e.g. 64M, 512K, 2G")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
