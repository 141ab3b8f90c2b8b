"""Package version ordering: apk-tools' own vectors for Alpine, dpkg's rules for Debian."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.core.pkgversion import (
    apk_compare,
    apk_valid,
    compare,
    deb_compare,
    deb_valid,
    newer,
)

VECTORS = Path(__file__).parent / "data" / "apk_version.data"
# apk's result bits, as its version matcher combines them.
EQUAL, LESS, GREATER = 1, 2, 4
FUZZY = 8


def _mask(op: str) -> int:
    mask = 0
    for char in op:
        mask |= {"<": LESS, ">": GREATER, "=": EQUAL, "~": FUZZY | EQUAL}[char]
    return mask


def _apk_vectors() -> list[tuple[int, str]]:
    out = []
    for number, line in enumerate(VECTORS.read_text().splitlines(), 1):
        text = line.partition("#")[0].strip()
        if text:
            out.append((number, text))
    return out


def _holds(text: str) -> bool:
    parts = text.split()
    if len(parts) == 1:
        version = parts[0]
        invert = version.startswith("!")
        return apk_valid(version[1:] if invert else version) != invert
    left, op, right = parts
    invert = op.startswith("!")
    mask = _mask(op.lstrip("!"))
    result = apk_compare(left, right, fuzzy=bool(mask & FUZZY))
    bit = {-1: LESS, 0: EQUAL, 1: GREATER}[result]
    return bool(bit & mask) != invert


def test_every_apk_tools_vector_holds() -> None:
    vectors = _apk_vectors()
    assert len(vectors) > 700  # the whole file, not a header mistaken for it
    failed = [f"line {n}: {text}" for n, text in vectors if not _holds(text)]
    assert failed == []


@pytest.mark.parametrize(("older", "newer_one"), [
    ("3.3.1-r0", "3.3.2-r0"),       # a new upstream release
    ("3.3.2-r0", "3.3.2-r1"),       # a rebuilt package with a fix backported
    ("1.36.1-r28", "1.36.1-r29"),
    ("8.9.1_rc1-r0", "8.9.1-r0"),   # a release candidate sorts before its release
    ("2.40.1-r0", "2.40.1_p1-r0"),  # a patch level after it
    ("1.2.3-r9", "1.2.10-r0"),      # numbers compare as numbers
])
def test_apk_fixes_sort_after_what_they_fix(older: str, newer_one: str) -> None:
    assert apk_compare(older, newer_one) == -1
    assert apk_compare(newer_one, older) == 1
    assert newer("apk", newer_one, older) and not newer("apk", older, newer_one)


@pytest.mark.parametrize(("older", "newer_one"), [
    ("3.0.15-1~deb12u1", "3.0.16-1~deb12u1"),  # a security update of bookworm's openssl
    ("3.0.16-1~deb12u1", "3.0.16-1"),          # "~" sorts before the empty string
    ("2.36-9+deb12u7", "2.36-9+deb12u10"),     # numbers inside the revision, as numbers
    ("9.9", "1:0.1"),                          # an epoch wins
    ("1.0~rc1-1", "1.0-1"),
    ("7.88.1-10+deb12u8", "7.88.1-10+deb12u12"),
])
def test_debian_order_is_dpkgs(older: str, newer_one: str) -> None:
    assert deb_compare(older, newer_one) == -1
    assert deb_compare(newer_one, older) == 1
    assert compare("deb", older, older) == 0


def test_debian_versions_that_are_not_versions() -> None:
    assert deb_valid("1:2.3-4")
    assert not deb_valid("")
    assert not deb_valid("a b")


def test_an_unknown_ordering_is_refused() -> None:
    with pytest.raises(ValueError, match="pypi"):
        compare("pypi", "1", "2")
