"""Which layer installed what: an image's package record and its attribution. Pure.

A record describes one image (by manifest digest): the selected files of its
final filesystem boiled down to what they say (``PathFacts``: the packages a
package database lists, the text of a small configuration file), and for every
package found, who installed that version (``Installer``): the orchestrator
layer (``os``) or upstream (``upstream:debian``) and the image layer (blob)
that wrote it.

Attribution compares each image layer's result with the one below: a package
whose version (and place) is unchanged keeps its installer, anything new or
changed belongs to the layer just read. So a child's record starts from its
parent's and reads only the child's own layers — the parent's ``PathFacts``
stand in for the parent's layers, which is what makes the SBOM read incremental
(``registry/layerpackages.py`` does the reading).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator.core.pkgsources import SOURCE_PATTERNS
from orchestrator.core.sbom import (
    SBOM_PATTERNS,
    SBOM_PRESENCE_PATTERNS,
    OsRelease,
    Package,
    merge_locations,
    packages_in,
    parse_dpkg_entries,
    parse_os_release,
)

INSTALLED_BY = "orchestrator:installed-by"  # SBOM component property: "os", "upstream:debian"
INSTALLED_IN = "orchestrator:layer-digest"  # the image layer (blob) that wrote the version
ORIGIN = "orchestrator:origin"  # the suite that offers the installed version

OS_RELEASE_PATHS = ("etc/os-release", "usr/lib/os-release")
APK_WORLD = "etc/apk/world"
APT_PREFERENCES = ("etc/apt/preferences", "etc/apt/preferences.d/*")
# Small configuration files whose text the record keeps.
TEXT_PATTERNS: tuple[str, ...] = (*OS_RELEASE_PATHS, *SOURCE_PATTERNS, APK_WORLD,
                                  *APT_PREFERENCES)
RECORD_PATTERNS: tuple[str, ...] = tuple(dict.fromkeys((*SBOM_PATTERNS, *TEXT_PATTERNS)))
RECORD_PRESENCE_PATTERNS = SBOM_PRESENCE_PATTERNS
RECORD_FORMAT = 1

FileKind = Literal["file", "symlink", "hardlink", "present"]
# (ecosystem, name, arch or "", the database or directory it was found in)
PackageId = tuple[str, str, str, str]


@dataclass(frozen=True)
class PathFacts:
    """What one selected path of an image's filesystem says."""

    kind: FileKind
    packages: tuple[Package, ...] = ()
    text: str | None = None  # the body of a small configuration file
    target: str | None = None  # a link's target
    held: tuple[str, ...] = ()  # dpkg packages on hold (apt-mark hold)


@dataclass(frozen=True)
class Installer:
    owner: str  # the orchestrator layer id, or "upstream:NAME"
    layer: str  # digest of the image layer (blob) that wrote this version


@dataclass(frozen=True)
class InstalledPackage:
    """One package of an image with who installed it: what fix decisions work on."""

    ecosystem: str
    name: str
    version: str
    arch: str | None
    source: str | None
    location: str  # "/var/lib/dpkg/status", a site-packages directory
    installed_by: str
    layer: str

    @property
    def key(self) -> tuple[str, str, str]:
        """What one installed instance is, across images: ecosystem, name, arch."""
        return (self.ecosystem, self.name, self.arch or "")

    @property
    def source_name(self) -> str:
        return self.source or self.name


@dataclass(frozen=True)
class PackageRecord:
    digest: str  # the image's manifest digest
    owner: str  # "os", "upstream:debian"
    layers: tuple[str, ...]  # its layer (blob) digests, oldest first
    files: Mapping[str, PathFacts]
    installers: Mapping[PackageId, Installer] = field(default_factory=dict)
    # The record it was attributed against: the parent's digest; None when read
    # from the bottom (an upstream, or a parent without a record).
    base: str | None = None

    def installed(self) -> list[InstalledPackage]:
        out = []
        for path, facts in self.files.items():
            for package in facts.packages:
                ident = package_id(package, path)
                who = self.installers.get(ident, Installer(self.owner, ""))
                out.append(InstalledPackage(package.ecosystem, package.name, package.version,
                                            package.arch, package.source, ident[3],
                                            who.owner, who.layer))
        return sorted(out, key=lambda p: (p.ecosystem, p.name, p.arch or "", p.location))

    def own(self) -> list[InstalledPackage]:
        """The packages this image's own layers added or changed."""
        return [p for p in self.installed() if p.installed_by == self.owner]

    def sbom_packages(self, origins: Mapping[tuple[str, str, str], str] | None = None
                      ) -> list[Package]:
        """The image's components with who installed them, as the SBOM lists them;
        ``origins`` (``core.packagefix.origins``) adds the suite each came from."""
        out = []
        for path, facts in self.files.items():
            for package in facts.packages:
                who = self.installers.get(package_id(package, path))
                origin = (origins or {}).get((package.ecosystem, package.name,
                                              package.arch or ""))
                if who is None and origin is None:
                    out.append(package)
                    continue
                props = []
                if who is not None:
                    props.append((INSTALLED_BY, who.owner))
                    if who.layer:
                        props.append((INSTALLED_IN, who.layer))
                if origin is not None:
                    props.append((ORIGIN, origin))
                out.append(Package(package.ecosystem, package.name, package.version,
                                   package.arch, package.locations, package.source,
                                   (*package.properties, *props)))
        return merge_locations(out)

    def release(self) -> OsRelease | None:
        """os-release; /etc/os-release is often a symlink to /usr/lib's."""
        for path in OS_RELEASE_PATHS:
            facts = self.files.get(path)
            if facts is not None and facts.text is not None:
                return parse_os_release(facts.text)
        return None

    def texts(self) -> dict[str, str | None]:
        """Path -> text of the configuration files kept (sources, apk arch and world)."""
        return {path: facts.text for path, facts in self.files.items()
                if facts.text is not None}

    def held(self) -> set[str]:
        return {name for facts in self.files.values() for name in facts.held}


def package_id(package: Package, path: str) -> PackageId:
    location = package.locations[0] if package.locations else "/" + path
    return (package.ecosystem, package.name, package.arch or "", location)


def facts_of(path: str, kind: FileKind, data: bytes | None,
             target: str | None = None) -> PathFacts:
    """What a selected file says; ``data`` None where its body was not read."""
    packages = tuple(packages_in(path, data))
    text = None
    held: tuple[str, ...] = ()
    if data is not None and _is_text_path(path):
        text = data.decode("utf-8", errors="replace")
    if data is not None and path == "var/lib/dpkg/status":
        held = tuple(sorted(e.name for e in parse_dpkg_entries(
            data.decode("utf-8", errors="replace")) if e.held))
    return PathFacts(kind, packages, text, target, held)


def _is_text_path(path: str) -> bool:
    from fnmatch import fnmatchcase

    return any(fnmatchcase(path, pattern) for pattern in TEXT_PATTERNS)


def versions(files: Mapping[str, PathFacts]) -> dict[PackageId, str]:
    """Every package of a filesystem state by identity, with its version."""
    return {package_id(p, path): p.version
            for path, facts in files.items() for p in facts.packages}


def attribute(below: Mapping[PackageId, str], below_installers: Mapping[PackageId, Installer],
              files: Mapping[str, PathFacts], installer: Installer) -> dict[PackageId, Installer]:
    """Installers after one more image layer: a package whose version is the same as
    below keeps its installer, one that is new or changed gets ``installer``."""
    out: dict[PackageId, Installer] = {}
    for ident, version in versions(files).items():
        kept = below_installers.get(ident)
        out[ident] = kept if kept is not None and below.get(ident) == version else installer
    return out


# --- storage form ------------------------------------------------------------------------


def record_to_json(record: PackageRecord) -> str:
    files = {}
    for path, facts in sorted(record.files.items()):
        entry: dict[str, Any] = {"k": facts.kind}
        if facts.packages:
            entry["p"] = [[p.ecosystem, p.name, p.version, p.arch, p.source,
                           list(p.locations)] for p in facts.packages]
        if facts.text is not None:
            entry["t"] = facts.text
        if facts.target is not None:
            entry["l"] = facts.target
        if facts.held:
            entry["h"] = list(facts.held)
        files[path] = entry
    installers = [[*ident, who.owner, who.layer]
                  for ident, who in sorted(record.installers.items())]
    return json.dumps({"format": RECORD_FORMAT, "digest": record.digest, "owner": record.owner,
                       "layers": list(record.layers), "base": record.base, "files": files,
                       "installers": installers}, separators=(",", ":"))


def record_from_json(text: str | bytes) -> PackageRecord:
    """Raises ValueError (or KeyError/TypeError) on a record this version cannot read."""
    data = json.loads(text)
    if data.get("format") != RECORD_FORMAT:
        raise ValueError(f"package record format {data.get('format')!r}")
    files = {}
    for path, entry in data["files"].items():
        packages = tuple(Package(eco, name, version, arch, tuple(locations), source)
                         for eco, name, version, arch, source, locations in entry.get("p", ()))
        files[path] = PathFacts(entry["k"], packages, entry.get("t"), entry.get("l"),
                                tuple(entry.get("h", ())))
    installers = {(eco, name, arch, where): Installer(owner, layer)
                  for eco, name, arch, where, owner, layer in data["installers"]}
    return PackageRecord(data["digest"], data["owner"], tuple(data["layers"]), files,
                         installers, data.get("base"))

