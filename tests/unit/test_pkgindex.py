"""Parsing Debian Release/Packages files and Alpine's APKINDEX."""

from __future__ import annotations

import pytest

from orchestrator.core.pkgindex import (
    IndexEntry,
    IndexFormatError,
    parse_apkindex,
    parse_packages,
    parse_release,
)

HEX = "ab" * 32
PACKAGES = f"""Package: libssl3
Source: openssl
Version: 3.0.16-1~deb12u1
Architecture: amd64
Description: Secure Sockets Layer toolkit
 Package: not-a-package (a continuation line)
SHA256: {HEX}

Package: glibc-doc
Source: glibc (2.36-9+deb12u10)
Version: 2.36-9+deb12u10
Architecture: all

Package: unwanted
Version: 1
"""


def test_packages_stream_keeps_only_the_names_asked_for() -> None:
    lines = PACKAGES.splitlines(keepends=True)
    assert list(parse_packages(lines, {"libssl3", "glibc-doc"})) == [
        IndexEntry("libssl3", "3.0.16-1~deb12u1", "amd64", "openssl", HEX),
        IndexEntry("glibc-doc", "2.36-9+deb12u10", "all", "glibc"),
    ]
    assert len(list(parse_packages(lines))) == 3


def test_a_packages_file_that_is_not_one() -> None:
    with pytest.raises(IndexFormatError, match="not a Packages file"):
        list(parse_packages(["<html>\n", "<body>oops</body>\n"]))


def test_release_lists_files_and_says_whether_it_is_a_security_suite() -> None:
    release = parse_release(
        "Origin: Debian\nLabel: Debian-Security\nSuite: stable-security\n"
        "Codename: bookworm-security\nDate: Sat, 29 Nov 2026 10:00:00 UTC\n"
        "Acquire-By-Hash: yes\nSHA256:\n"
        f" {HEX} 1234 main/binary-amd64/Packages\n"
        f" {HEX} 234 main/binary-amd64/Packages.xz\n"
        f" {HEX} 300 main/binary-arm64/Packages.gz\n")
    assert release.security and release.by_hash
    assert release.codename == "bookworm-security"
    amd64 = release.packages_file("main", "amd64")
    assert amd64 is not None and (amd64.path, amd64.size) == ("main/binary-amd64/Packages.xz",
                                                             234)
    arm64 = release.packages_file("main", "arm64")
    assert arm64 is not None and arm64.path.endswith(".gz")
    assert release.packages_file("contrib", "amd64") is None
    assert not parse_release(f"Suite: bookworm\nSHA256:\n {HEX} 1 main/x\n").security


@pytest.mark.parametrize(("fields", "flags", "priority"), [
    ("", (False, False), 500),
    ("NotAutomatic: yes\n", (True, False), 1),  # experimental
    ("NotAutomatic: yes\nButAutomaticUpgrades: yes\n", (True, True), 100),  # backports
    ("NotAutomatic: Yes\nButAutomaticUpgrades: no\n", (True, False), 1),
    ("NotAutomatic: no\n", (False, False), 500),
    ("NotAutomatic: maybe\n", (False, False), 500),  # apt: an unknown value leaves it unset
    ("NotAutomatic: yes\n forged: line\n", (False, False), 500),
])
def test_a_release_says_whether_apt_installs_from_it_by_itself(
        fields: str, flags: tuple[bool, bool], priority: int) -> None:
    from orchestrator.core.pkgindex import release_priority

    release = parse_release(f"Suite: bookworm-backports\n{fields}"
                            f"SHA256:\n {HEX} 10 main/binary-amd64/Packages\n")
    assert (release.not_automatic, release.but_automatic_upgrades) == flags
    assert release_priority(*flags) == priority


@pytest.mark.parametrize("text", [
    "<html><body>502 Bad Gateway</body></html>",
    "Suite: bookworm\n",  # no file list
    f"Suite: bookworm\nSHA256:\n {HEX} big main/binary-amd64/Packages\n",
    "\x00\x01binary",
])
def test_garbage_is_not_a_release(text: str) -> None:
    with pytest.raises(IndexFormatError):
        parse_release(text)


def test_apkindex_blocks() -> None:
    text = "C:Q1x=\nP:libssl3\nV:3.3.2-r0\nA:x86_64\no:openssl\n\nP:musl\nV:1.2.5-r0\n"
    assert parse_apkindex(text) == [IndexEntry("libssl3", "3.3.2-r0", "x86_64", "openssl"),
                                    IndexEntry("musl", "1.2.5-r0", None)]
    assert parse_apkindex(text, {"musl"}) == [IndexEntry("musl", "1.2.5-r0", None)]
    with pytest.raises(IndexFormatError):
        parse_apkindex("<html>\nnot: an index\n")


def test_a_release_cannot_smuggle_lines_or_escapes_into_the_suite() -> None:
    # The suite a Release names goes into the cause line ("package fix: … (SUITE)"),
    # plan/status/explain output, history and the provenance. A mirror's continuation
    # line or terminal escape must not forge lines there: such a name is not a suite.
    release = parse_release(
        "Codename: trixie\n injected: line\n"
        "Suite: stable\x1b[2J\n"
        "Date: Sat, 29 Nov 2026 10:00:00 UTC\n forged\n"
        f"SHA256:\n {HEX} 10 main/binary-amd64/Packages\n")
    assert (release.codename, release.suite, release.date) == (None, None, None)
    fine = parse_release("Codename: bookworm-security\nSuite: stable-security\n"
                         f"SHA256:\n {HEX} 10 main/binary-amd64/Packages\n")
    assert (fine.codename, fine.suite, fine.security) == \
        ("bookworm-security", "stable-security", True)
