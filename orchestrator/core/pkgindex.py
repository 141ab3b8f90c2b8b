"""Package indexes as distributions publish them: Debian's Release and Packages files,
Alpine's APKINDEX. Pure: text in, values out (``registry/indexwatch.py`` fetches).

A Debian suite's ``InRelease`` (or ``Release``) lists every index file of the
suite with its SHA256 and size; ``Packages`` lists each binary package's
name, version, architecture, source and file digest. ``InRelease`` is a
clear-signed ``Release``: the signature is stripped and not checked here.

A Release may say ``NotAutomatic: yes`` (experimental) and also
``ButAutomaticUpgrades: yes`` (backports): apt then gives the suite's versions a
default priority of 1 or 100 instead of 500 (apt_preferences(5)), so it never
installs or upgrades to them by itself, except, with ``ButAutomaticUpgrades``, a
package whose installed version has no higher priority (one installed from there).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from orchestrator.core.errors import OrchestratorError
from orchestrator.core.pkgsources import is_security_suite

# Preferred first: the smallest download.
PACKAGES_NAMES = ("Packages.xz", "Packages.gz", "Packages")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SUITE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~/-]{0,99}$")  # "bookworm-security"
_ONE_LINE = re.compile(r"^[^\x00-\x1f\x7f-\x9f]{1,200}$")
# apt's default priorities of a suite's versions (apt-pkg/policy.cc, apt_preferences(5)).
PRIORITY_DEFAULT = 500
PRIORITY_BUT_AUTOMATIC_UPGRADES = 100  # also what the installed version has
PRIORITY_NOT_AUTOMATIC = 1


class IndexFormatError(OrchestratorError):
    """An index answer that is not what it should be (an error page, a truncated file)."""


@dataclass(frozen=True)
class IndexEntry:
    """One package version an index offers."""

    name: str
    version: str
    arch: str | None
    source: str | None = None  # source package when not the same as name
    sha256: str | None = None  # of the package file, where the index gives it


@dataclass(frozen=True)
class IndexSnapshot:
    """What one index offers now, for the packages asked about. ``digest``/``date``
    identify the snapshot (provenance lists them)."""

    source: str  # IndexSource.id: "apt URI SUITE", "apk URL"
    suite: str  # as the index names itself: "bookworm-security", "v3.20/main"
    security: bool
    date: str | None
    digest: str  # "sha256:…" of the Release (or APKINDEX.tar.gz) read
    url: str  # where it was read
    entries: Mapping[str, tuple[IndexEntry, ...]]  # by package name
    changed_at: float = 0.0
    # The Release's NotAutomatic/ButAutomaticUpgrades (never set for apk).
    not_automatic: bool = False
    but_automatic_upgrades: bool = False

    @property
    def ecosystem(self) -> str:
        return "apk" if self.source.startswith("apk ") else "deb"

    @property
    def priority(self) -> int:
        """The priority apt gives this suite's versions when no preferences say
        otherwise."""
        return release_priority(self.not_automatic, self.but_automatic_upgrades)


def release_priority(not_automatic: bool, but_automatic_upgrades: bool) -> int:
    # As apt's policy does: ButAutomaticUpgrades is looked at before NotAutomatic.
    if but_automatic_upgrades:
        return PRIORITY_BUT_AUTOMATIC_UPGRADES
    return PRIORITY_NOT_AUTOMATIC if not_automatic else PRIORITY_DEFAULT


@dataclass(frozen=True)
class IndexFile:
    path: str  # relative to the suite: "main/binary-amd64/Packages.xz"
    sha256: str
    size: int


@dataclass(frozen=True)
class ReleaseInfo:
    suite: str | None
    codename: str | None
    date: str | None
    label: str | None
    origin: str | None
    by_hash: bool  # Acquire-By-Hash: files also under by-hash/SHA256/<hex>
    files: Mapping[str, IndexFile] = field(default_factory=dict)
    not_automatic: bool = False  # "NotAutomatic: yes"
    but_automatic_upgrades: bool = False  # "ButAutomaticUpgrades: yes"

    @property
    def security(self) -> bool:
        return any(is_security_suite(name) for name in (self.suite, self.codename) if name) \
            or "security" in (self.label or "").lower()

    def packages_file(self, component: str, arch: str) -> IndexFile | None:
        """The Packages file of ``component`` for ``arch`` ("" for a flat repository),
        in the form cheapest to fetch."""
        folder = f"{component}/binary-{arch}/" if component else ""
        for name in PACKAGES_NAMES:
            found = self.files.get(folder + name)
            if found is not None:
                return found
        return None


def parse_release(text: str) -> ReleaseInfo:
    """A Release or InRelease file. Raises IndexFormatError for anything else."""
    from debian.deb822 import Release

    if "\x00" in text:
        raise IndexFormatError("not a Release file: binary data")
    try:
        release = Release(text.splitlines(keepends=True))
        listed = release.get("SHA256") or []
    except (ValueError, KeyError) as exc:
        raise IndexFormatError(f"not a Release file: {exc}") from exc
    if not any(key in release for key in ("Suite", "Codename")) or not listed:
        raise IndexFormatError("not a Release file: no Suite/Codename or no SHA256 list")
    files = {}
    for entry in listed:
        digest, size, name = entry.get("sha256", ""), entry.get("size", ""), entry.get("name")
        if not name or not _HEX64.match(digest) or not str(size).isdigit():
            raise IndexFormatError(f"not a Release file: bad SHA256 line for {name!r}")
        files[name] = IndexFile(name, digest, int(size))

    def field_of(key: str, form: re.Pattern[str] = _ONE_LINE) -> str | None:
        # What the mirror says goes into cause lines, terminals and the provenance: a
        # value with a line break or a control character is not taken as said.
        value = release.get(key)
        if value is None:
            return None
        text = str(value).strip()
        return text if form.match(text) else None

    return ReleaseInfo(field_of("Suite", _SUITE), field_of("Codename", _SUITE),
                       field_of("Date"), field_of("Label"), field_of("Origin"),
                       (field_of("Acquire-By-Hash") or "").lower() == "yes", files,
                       _flag(field_of("NotAutomatic")),
                       _flag(field_of("ButAutomaticUpgrades")))


def _flag(value: str | None) -> bool:
    """A yes/no field read as apt reads it (StringToBool); anything else is "no"."""
    if value is None:
        return False
    return value.lower() in ("yes", "true", "with", "on", "enable", "1")


def parse_packages(lines: Iterable[str], wanted: Collection[str] | None = None
                   ) -> Iterator[IndexEntry]:
    """The entries of a Packages file, streamed; with ``wanted``, only those names (a
    suite's main Packages has 60,000 stanzas, our layers installed a few hundred).
    Only the fields read here are looked at; continuation lines are skipped."""
    fields: dict[str, str] = {}
    skipping = False
    for line in lines:
        if line[:1] in (" ", "\t"):
            continue
        line = line.rstrip("\r\n")
        if not line:
            if fields and not skipping:
                entry = _entry(fields)
                if entry is not None:
                    yield entry
            fields, skipping = {}, False
            continue
        if skipping:
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise IndexFormatError(f"not a Packages file: {line[:60]!r}")
        key = key.lower()
        if key == "package":
            name = value.strip()
            if wanted is not None and name not in wanted:
                skipping = True
                continue
        if key in ("package", "version", "architecture", "source", "sha256"):
            fields.setdefault(key, value.strip())
    if fields and not skipping:
        entry = _entry(fields)
        if entry is not None:
            yield entry


def _entry(fields: Mapping[str, str]) -> IndexEntry | None:
    name, version = fields.get("package"), fields.get("version")
    if not name or not version:
        return None
    source = fields.get("source", "").split(" ", 1)[0] or None
    return IndexEntry(name, version, fields.get("architecture") or None,
                      source if source != name else None, fields.get("sha256") or None)


def parse_apkindex(text: str | Iterable[str], wanted: Collection[str] | None = None
                   ) -> list[IndexEntry]:
    """Alpine's APKINDEX (the text inside APKINDEX.tar.gz): ``P:`` name, ``V:``
    version, ``A:`` arch, ``o:`` origin. ``C:`` is a checksum of the package's
    control data, not of its file, so no sha256 is given. ``text``: the whole text,
    or its lines streamed (only the entries wanted are kept)."""
    out: list[IndexEntry] = []
    fields: dict[str, str] = {}
    head = ""  # the block's start, for the error

    def flush() -> None:
        name, version = fields.get("P"), fields.get("V")
        if not name or not version:
            raise IndexFormatError(f"not an APKINDEX: a block without P: or V: ({head!r})")
        if wanted is not None and name not in wanted:
            return
        origin = fields.get("o") or None
        out.append(IndexEntry(name, version, fields.get("A") or None,
                              origin if origin != name else None))

    for line in text.splitlines() if isinstance(text, str) else text:
        line = line.rstrip("\r\n")
        if not line.strip():
            if head:
                flush()
            fields, head = {}, ""
            continue
        if len(head) < 60:
            head = (head + "\n" + line if head else line)[:60]
        key, sep, value = line.partition(":")
        if sep and len(key) == 1 and key not in fields:
            fields[key] = value.strip()
    if head:
        flush()
    return out
