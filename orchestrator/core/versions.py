"""Tag policies for upstreams: "semver", "semver:RANGE", "regex:PATTERN". Pure.

Ranges: ``~3`` (3.*), ``~3.20`` (3.20.*), ``^2.4`` (>=2.4, <3), ``3.x``,
or comparisons joined by commas (``>=2.4,<3``). Tags may carry a leading
"v" and one to three numeric parts; pre-releases ("-rc1") never match.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

Version = tuple[int, int, int]

_VERSION = re.compile(r"^[vV]?(\d+)(?:\.(\d+))?(?:\.(\d+))?$")
_COMPARISON = re.compile(r"^(>=|<=|>|<|==|=)?\s*[vV]?(\d+(?:\.\d+){0,2})$")


def parse_version(tag: str) -> Version | None:
    match = _VERSION.match(tag)
    if not match:
        return None
    major, minor, patch = (int(g) if g is not None else 0 for g in match.groups())
    return (major, minor, patch)


def _parts(text: str) -> list[int]:
    return [int(p) for p in text.split(".")]


def _bump(parts: list[int]) -> Version:
    """Upper bound (exclusive) of a prefix: 3 -> 4.0.0, 3.20 -> 3.21.0."""
    padded = [*parts[:-1], parts[-1] + 1, 0, 0]
    return (padded[0], padded[1], padded[2])


def _pad(parts: list[int]) -> Version:
    padded = [*parts, 0, 0]
    return (padded[0], padded[1], padded[2])


def _range_predicate(spec: str) -> Callable[[Version], bool]:
    spec = spec.strip()
    if not spec or spec == "*":
        return lambda v: True
    if spec.startswith("~"):
        parts = _parts(spec[1:].lstrip("vV"))
        low, high = _pad(parts), _bump(parts[:2] if len(parts) > 1 else parts)
        return lambda v: low <= v < high
    if spec.startswith("^"):
        parts = _parts(spec[1:].lstrip("vV"))
        low = _pad(parts)
        # ^0.x pins the minor, as npm and cargo do.
        cut = 1 if parts[0] != 0 else min(2, len(parts))
        high = _bump(parts[:cut])
        return lambda v: low <= v < high
    if spec.endswith((".x", ".*")):
        parts = _parts(spec[:-2].lstrip("vV"))
        low, high = _pad(parts), _bump(parts)
        return lambda v: low <= v < high
    checks: list[Callable[[Version], bool]] = []
    for clause in spec.split(","):
        match = _COMPARISON.match(clause.strip())
        if not match:
            raise ValueError(f"cannot read version range {spec!r}")
        op, bound = match.group(1) or "==", _pad(_parts(match.group(2)))
        checks.append(_compare(op, bound))
    return lambda v: all(check(v) for check in checks)


def _compare(op: str, bound: Version) -> Callable[[Version], bool]:
    ops: dict[str, Callable[[Version], bool]] = {
        ">=": lambda v: v >= bound,
        "<=": lambda v: v <= bound,
        ">": lambda v: v > bound,
        "<": lambda v: v < bound,
        "==": lambda v: v == bound,
        "=": lambda v: v == bound,
    }
    return ops[op]


def check_track(track: str) -> str | None:
    """None when the policy is valid, else what is wrong and how to write it."""
    try:
        matcher(track)
    except (ValueError, re.error) as exc:
        return f"{exc}; use \"semver\", \"semver:~3.20\", \"semver:>=2.4,<3\" or \"regex:PATTERN\""
    return None


def matcher(track: str) -> Callable[[str], tuple[int, ...] | None]:
    """A function from a tag to its sort key, or None when the tag does not match."""
    kind, _, arg = track.partition(":")
    if kind == "semver":
        accept = _range_predicate(arg)

        def semver_key(tag: str) -> tuple[int, ...] | None:
            version = parse_version(tag)
            return version if version is not None and accept(version) else None

        return semver_key
    if kind == "regex":
        pattern = re.compile(arg)

        def regex_key(tag: str) -> tuple[int, ...] | None:
            if not pattern.fullmatch(tag):
                return None
            # Order matching tags by their numbers, so "3.10" sorts after "3.9".
            return tuple(int(n) for n in re.findall(r"\d+", tag))

        return regex_key
    raise ValueError(f"unknown track policy {track!r}")


def newest(tags: Iterable[str], track: str) -> str | None:
    key = matcher(track)
    best: tuple[tuple[int, ...], str] | None = None
    for tag in tags:
        k = key(tag)
        if k is not None and (best is None or (k, tag) > best):
            best = (k, tag)
    return best[1] if best else None
