"""CycloneDX SBOMs from an image's package databases, and what ``explain`` reads from them. Pure.

Input is a few files of the image's final filesystem (``SBOM_PATTERNS``, read
by ``orchestrator.registry.imagefs``), as path -> body, None where only the
path's existence is known (a symlink). Found:

- Debian packages, from ``var/lib/dpkg/status`` (and distroless
  ``status.d/*``): installed ones only, ``pkg:deb/<vendor>/NAME@VERSION?arch=A``
  with ``distro=<id>-<version>`` from os-release when known (the deb purl
  type defines that qualifier; vendor is os-release's ID, "debian" by default).
- Alpine packages, from ``lib/apk/db/installed``: ``pkg:apk/<vendor>/NAME@V?arch=A``
  (the apk type defines no distro qualifier).
- Python distributions, from ``*.dist-info/METADATA`` and ``*.egg-info/PKG-INFO``:
  ``pkg:pypi/NAME@V`` with NAME normalised as PEP 503 says.
- CPython interpreters that pyenv compiled — no package manager records them:
  one component per ``.pyenv/versions/<version>/bin/python*``, ``pkg:generic/cpython@V``.
- The OS itself, from os-release, as an ``operating-system`` component.

``build_sbom`` writes CycloneDX 1.6 JSON with cyclonedx-python-lib, imported
inside it (with packageurl-python): the CLI imports this module to read SBOMs,
and ``headline``/``diff`` need only the standard library.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote

from orchestrator.core.errors import OrchestratorError

if TYPE_CHECKING:
    from datetime import datetime

SBOM_MEDIA_TYPE = "application/vnd.cyclonedx+json"
# Component properties (CycloneDX name/value pairs, namespaced as its taxonomy asks).
SOURCE_PACKAGE = "orchestrator:source-package"
SPEC_VERSION = "1.6"  # what build_sbom writes (JsonV1Dot6)

# What build_sbom reads: imagefs.select_files(layers, SBOM_PATTERNS,
# presence=SBOM_PRESENCE_PATTERNS) gives it the files it takes.
SBOM_PATTERNS: tuple[str, ...] = (
    "var/lib/dpkg/status",
    "var/lib/dpkg/status.d/*",
    "lib/apk/db/installed",
    "**/site-packages/*.dist-info/METADATA",
    "**/dist-packages/*.dist-info/METADATA",
    "**/site-packages/*.egg-info/PKG-INFO",
    "etc/os-release",
    "usr/lib/os-release",
)
# Only whether these exist: an interpreter's version is in its path, and its
# binary can be tens of MiB.
SBOM_PRESENCE_PATTERNS: tuple[str, ...] = ("**/.pyenv/versions/*/bin/python*",)

_PYENV_PYTHON = re.compile(r"(?:^|/)\.pyenv/versions/([^/]+)/bin/python[0-9.]*t?$")
# CPython as pyenv names it: 3.13.5, 3.14.0rc1, 3.13.5t (free-threaded). Not pypy3.10-…,
# miniconda3-…, or a virtualenv's own name.
_CPYTHON_VERSION = re.compile(r"^\d+\.\d+(?:\.\d+)?(?:(?:a|b|rc)\d+)?t?$")
_PEP503 = re.compile(r"[-_.]+")

Ecosystem = Literal["deb", "apk", "pypi", "cpython"]


class SbomError(OrchestratorError):
    """An SBOM that cannot be read."""


@dataclass(frozen=True)
class Package:
    """One component found in the image."""

    ecosystem: Ecosystem
    name: str
    version: str
    arch: str | None
    locations: tuple[str, ...]  # where it was found, absolute paths in the image
    source: str | None = None  # the source package: dpkg's Source, apk's origin
    # CycloneDX properties of the component (("orchestrator:installed-by", "os")).
    properties: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class DpkgEntry:
    """One installed package of a dpkg database, with what fix decisions need."""

    name: str
    version: str
    arch: str | None
    source: str | None  # source package name; dpkg omits the field when it equals name
    held: bool  # selection "hold" (apt-mark hold): apt will not upgrade it


@dataclass(frozen=True)
class OsRelease:
    id: str  # "debian", "alpine", "ubuntu"
    version_id: str | None  # "12", "3.20.3"
    pretty_name: str | None


@dataclass(frozen=True)
class Change:
    """One line of an SBOM diff."""

    op: Literal["+", "-", "~"]
    ecosystem: str  # purl type ("deb", "pypi", "generic"), or "os"
    name: str
    arch: str | None
    old: str | None  # versions, ", "-joined where one name has several
    new: str | None

    def render(self, show_arch: bool = False) -> str:
        name = f"{self.name}:{self.arch}" if show_arch and self.arch else self.name
        if self.op == "~":
            return f"~ {self.ecosystem} {name} {self.old} -> {self.new}"
        version = self.new if self.op == "+" else self.old
        return f"{self.op} {self.ecosystem} {name}" + (f" {version}" if version else "")


# --- finding packages --------------------------------------------------------------------


def find_packages(files: Mapping[str, bytes | None]) -> list[Package]:
    """Every component the selected files record, sorted; duplicates (one distribution
    in two site-packages) merged with both locations."""
    found: list[Package] = []
    for path, body in sorted(files.items()):
        found += packages_in(path, body)
    return merge_locations(found)


def packages_in(path: str, body: bytes | None) -> list[Package]:
    """The components one selected file records (``path`` relative, as imagefs gives it;
    ``body`` None where only the path is known)."""
    where = ("/" + path,)
    if path == "var/lib/dpkg/status" or path.startswith("var/lib/dpkg/status.d/"):
        if body is None:
            return []
        distroless = path != "var/lib/dpkg/status"
        return [Package("deb", e.name, e.version, e.arch, where, e.source)
                for e in parse_dpkg_entries(_text(body), distroless)]
    if path == "lib/apk/db/installed":
        if body is None:
            return []
        return [Package("apk", name, version, arch, where, origin)
                for name, version, arch, origin in _apk_entries(_text(body))]
    if path.endswith(("/METADATA", "/PKG-INFO")):
        if body is None or (dist := parse_python_metadata(_text(body))) is None:
            return []
        return [Package("pypi", pep503_name(dist[0]), dist[1], None, where)]
    if (match := _PYENV_PYTHON.search(path)) and _CPYTHON_VERSION.match(match[1]):
        return [Package("cpython", "cpython", match[1], None,
                        ("/" + path.rpartition("/bin/")[0],))]
    return []


def merge_locations(packages: list[Package]) -> list[Package]:
    """One component per identity found in several places, with every location, sorted."""
    found: dict[tuple[Any, ...], list[str]] = defaultdict(list)
    for package in packages:
        found[(package.ecosystem, package.name, package.version, package.arch,
               package.source, package.properties)] += package.locations
    merged = [Package(eco, name, version, arch, tuple(sorted(set(paths))), source, props)
              for (eco, name, version, arch, source, props), paths in found.items()]
    return sorted(merged, key=lambda p: (p.ecosystem, p.name, p.arch or "", p.version,
                                         p.locations))


def parse_dpkg_status(text: str, distroless: bool = False) -> list[tuple[str, str, str | None]]:
    """(name, version, arch) of installed packages."""
    return [(e.name, e.version, e.arch) for e in parse_dpkg_entries(text, distroless)]


def parse_dpkg_entries(text: str, distroless: bool = False) -> list[DpkgEntry]:
    """Installed packages of a dpkg database. "Installed" is the third word of Status
    (so held packages count); distroless's status.d files omit Status."""
    out = []
    for stanza in _stanzas(text):
        name, version = stanza.get("package"), stanza.get("version")
        status = stanza.get("status", "install ok installed" if distroless else "").split()
        if name and version and len(status) == 3 and status[2] == "installed":
            # "Source: glibc (2.36-9+deb12u7)": the source's version when it differs.
            source = stanza.get("source", "").split(" ", 1)[0] or None
            out.append(DpkgEntry(name, version, stanza.get("architecture") or None, source,
                                 status[0] == "hold"))
    return out


def parse_apk_installed(text: str) -> list[tuple[str, str, str | None]]:
    """(name, version, arch) from apk's installed database (``P:``, ``V:``, ``A:`` lines)."""
    return [(name, version, arch) for name, version, arch, _ in _apk_entries(text)]


def _apk_entries(text: str) -> list[tuple[str, str, str | None, str | None]]:
    """(name, version, arch, origin) from apk's installed database or an APKINDEX,
    which share the format; ``o:`` is the origin (source) package."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep and len(key) == 1 and key not in fields:
                fields[key] = value.strip()
        if fields.get("P") and fields.get("V"):
            origin = fields.get("o") or None
            out.append((fields["P"], fields["V"], fields.get("A") or None,
                        origin if origin != fields["P"] else None))
    return out


def parse_python_metadata(text: str) -> tuple[str, str] | None:
    """(Name, Version) from core metadata headers; only the header block is read."""
    name = version = None
    for line in text.splitlines():
        if not line.strip():
            break  # the body (long description) follows the first blank line
        key, sep, value = line.partition(":")
        if not sep:
            continue
        lowered = key.strip().lower()
        if lowered == "name" and name is None:
            name = value.strip()
        elif lowered == "version" and version is None:
            version = value.strip()
    return (name, version) if name and version else None


def parse_os_release(text: str) -> OsRelease | None:
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            values[key] = value
    if not values.get("ID"):
        return None
    return OsRelease(values["ID"].lower(), values.get("VERSION_ID") or None,
                     values.get("PRETTY_NAME") or None)


def os_release(files: Mapping[str, bytes | None]) -> OsRelease | None:
    """os-release of the image; /etc/os-release is often a symlink to /usr/lib's."""
    for path in ("etc/os-release", "usr/lib/os-release"):
        body = files.get(path)
        if body is not None:
            return parse_os_release(_text(body))
    return None


def pep503_name(name: str) -> str:
    return _PEP503.sub("-", name).lower()


def package_purl(package: Package, release: OsRelease | None) -> str:
    from packageurl import PackageURL

    qualifiers: dict[str, str] = {}
    if package.arch:
        qualifiers["arch"] = package.arch
    namespace: str | None = None
    if package.ecosystem == "deb":
        namespace = release.id if release else "debian"
        if release and release.version_id:
            qualifiers["distro"] = f"{release.id}-{release.version_id}"
    elif package.ecosystem == "apk":
        namespace = release.id if release else "alpine"
    if package.ecosystem == "cpython":
        return str(PackageURL(type="generic", name="cpython", version=package.version))
    return str(PackageURL(type=package.ecosystem, namespace=namespace, name=package.name,
                          version=package.version, qualifiers=qualifiers or None))


# --- writing -----------------------------------------------------------------------------


def build_sbom(files: Mapping[str, bytes | None], *, image_name: str, image_digest: str,
               image_tag: str | None = None, tool_version: str,
               timestamp: datetime | None = None) -> bytes:
    """CycloneDX 1.6 JSON (UTF-8) for one image, from its selected files."""
    return sbom_document(find_packages(files), os_release(files), image_name=image_name,
                         image_digest=image_digest, image_tag=image_tag,
                         tool_version=tool_version, timestamp=timestamp)


def sbom_document(packages: list[Package], release: OsRelease | None, *, image_name: str,
                  image_digest: str, image_tag: str | None = None, tool_version: str,
                  timestamp: datetime | None = None) -> bytes:
    """CycloneDX 1.6 JSON (UTF-8) for one image. ``metadata.component`` is the image;
    the serial number derives from its digest, so with ``timestamp`` given the same
    image yields the same bytes. A package's ``properties`` become the component's."""
    import uuid

    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.component_evidence import ComponentEvidence, Occurrence
    from cyclonedx.output.json import JsonV1Dot6
    from packageurl import PackageURL

    if not re.fullmatch(r"sha256:[0-9a-f]{64}", image_digest):
        raise SbomError(f"image digest is not a sha256 digest: {image_digest!r}")
    repository_name = image_name.rpartition("/")[2]
    qualifiers = {"repository_url": image_name}
    if image_tag:
        qualifiers["tag"] = image_tag
    image = Component(
        type=ComponentType.CONTAINER, name=image_name, version=image_tag or image_digest,
        bom_ref=image_digest,
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=image_digest.removeprefix("sha256:"))],
        purl=PackageURL(type="oci", name=repository_name, version=image_digest,
                        qualifiers=qualifiers),
    )
    metadata = BomMetaData(component=image, timestamp=timestamp)
    metadata.tools.components.add(
        Component(type=ComponentType.APPLICATION, name="orchestrator", version=tool_version))
    serial = uuid.uuid5(uuid.NAMESPACE_URL, f"{image_name}@{image_digest}")
    bom = Bom(serial_number=serial, metadata=metadata)

    components = []
    if release is not None:
        components.append(Component(
            type=ComponentType.OPERATING_SYSTEM, name=release.id, version=release.version_id,
            description=release.pretty_name,
            bom_ref=f"os:{release.id}@{release.version_id or ''}"))
    refs: set[str] = set()
    for package in packages:
        purl = package_purl(package, release)
        # One name and version found twice with different properties (installed by two
        # layers into two places) stays two components: bom-refs must be unique.
        ref, count = purl, 1
        while ref in refs:
            count += 1
            ref = f"{purl}#{count}"
        refs.add(ref)
        kind = ComponentType.APPLICATION if package.ecosystem == "cpython" \
            else ComponentType.LIBRARY
        properties = list(package.properties)
        if package.source is not None:
            properties.append((SOURCE_PACKAGE, package.source))
        components.append(Component(
            type=kind, name=package.name, version=package.version,
            purl=PackageURL.from_string(purl), bom_ref=ref,
            evidence=ComponentEvidence(occurrences=[Occurrence(location=where)
                                                    for where in package.locations]),
            properties=[Property(name=k, value=v) for k, v in properties],
        ))
    for component in components:
        bom.components.add(component)
    # The image contains them all; without this the library warns that the
    # dependency graph is incomplete.
    bom.register_dependency(image, components)
    return JsonV1Dot6(bom).output_as_string(indent=None).encode("utf-8")


# --- reading -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    ecosystem: str
    name: str
    arch: str | None
    version: str


def headline(sbom: Mapping[str, Any] | bytes | str) -> dict[str, Any]:
    """What ``explain`` prints: component counts per ecosystem, the OS, and the
    versions of the Python interpreters and of flask."""
    counts: dict[str, int] = defaultdict(int)
    pythons: set[str] = set()
    flask: set[str] = set()
    system: str | None = None
    for entry in _entries(sbom):
        if entry.ecosystem == "os":
            system = f"{entry.name} {entry.version}".strip()
            continue
        counts[entry.ecosystem] += 1
        if entry.ecosystem == "generic" and entry.name == "cpython":
            pythons.add(entry.version)
        elif entry.ecosystem == "pypi" and entry.name == "flask":
            flask.add(entry.version)
    return {
        "os": system,
        "components": sum(counts.values()),
        "ecosystems": dict(sorted(counts.items())),
        "python": sorted(pythons, key=_version_key),
        "flask": sorted(flask, key=_version_key),
    }


def diff(old: Mapping[str, Any] | bytes | str, new: Mapping[str, Any] | bytes | str
         ) -> list[Change]:
    """Added, removed and changed components between two SBOMs. A component is its
    ecosystem + name (+ arch); where one has several versions, they compare as a set."""
    before = _versions(old)
    after = _versions(new)
    changes = []
    for key in sorted(before.keys() | after.keys(), key=lambda k: (k[0], k[1], k[2] or "")):
        was, now = before.get(key), after.get(key)
        if was == now:
            continue
        ecosystem, name, arch = key
        if was is None:
            changes.append(Change("+", ecosystem, name, arch, None, _join(now)))
        elif now is None:
            changes.append(Change("-", ecosystem, name, arch, _join(was), None))
        else:
            changes.append(Change("~", ecosystem, name, arch, _join(was), _join(now)))
    return changes


def render_diff(changes: list[Change]) -> str:
    """One line per change (``~ pypi flask 3.0.3 -> 3.1.0``); an arch is shown only
    where one name appears with several (multiarch ``libc6:amd64``/``libc6:i386``)."""
    arches: dict[tuple[str, str], set[str | None]] = defaultdict(set)
    for change in changes:
        arches[(change.ecosystem, change.name)].add(change.arch)
    return "\n".join(change.render(len(arches[(change.ecosystem, change.name)]) > 1)
                     for change in changes)


def _versions(sbom: Mapping[str, Any] | bytes | str
              ) -> dict[tuple[str, str, str | None], frozenset[str]]:
    versions: dict[tuple[str, str, str | None], set[str]] = defaultdict(set)
    for entry in _entries(sbom):
        versions[(entry.ecosystem, entry.name, entry.arch)].add(entry.version)
    return {key: frozenset(found) for key, found in versions.items()}


def _entries(sbom: Mapping[str, Any] | bytes | str) -> Iterator[_Entry]:
    data = _load(sbom)
    components = data.get("components")
    if components is None:
        return
    if not isinstance(components, list):
        raise SbomError("components: expected a list")
    for index, component in enumerate(components):
        if not isinstance(component, Mapping):
            raise SbomError(f"components[{index}]: expected an object")
        name, version = component.get("name"), component.get("version") or ""
        if not isinstance(name, str) or not isinstance(version, str):
            raise SbomError(f"components[{index}]: name and version must be strings")
        if component.get("type") == "operating-system":
            yield _Entry("os", name, None, version)
            continue
        purl = component.get("purl")
        if isinstance(purl, str) and purl.startswith("pkg:"):
            kind, purl_name, arch = _purl_identity(purl)
            yield _Entry(kind, purl_name or name, arch, version)
        else:
            yield _Entry(str(component.get("type") or "other"), name, None, version)


def _purl_identity(purl: str) -> tuple[str, str | None, str | None]:
    """(type, name, arch) of a purl, by the spec's own split: type before the first
    "/", name the last path segment before "@", qualifiers after "?". A small
    parser, so reading SBOMs needs no third-party import."""
    rest = purl.removeprefix("pkg:").lstrip("/")
    rest, _, _subpath = rest.partition("#")
    rest, _, query = rest.partition("?")
    kind, _, path = rest.partition("/")
    path = path.rpartition("@")[0] if "@" in path else path
    name = unquote(path.rstrip("/").rpartition("/")[2]) or None
    arch = None
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key.lower() == "arch":
            arch = unquote(value) or None
    return kind.lower(), name, arch


def _load(sbom: Mapping[str, Any] | bytes | str) -> Mapping[str, Any]:
    if isinstance(sbom, Mapping):
        data: Any = sbom
    else:
        try:
            data = json.loads(sbom)
        except ValueError as exc:
            raise SbomError(f"not JSON: {exc}") from exc
    if not isinstance(data, Mapping) or data.get("bomFormat") != "CycloneDX":
        raise SbomError("not a CycloneDX JSON document")
    return data


def _join(versions: frozenset[str] | None) -> str | None:
    return ", ".join(sorted(versions, key=_version_key)) if versions else None


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Numbers compare as numbers (3.9 < 3.13); good enough for ordering a short list."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-+~:]", version))


def _stanzas(text: str) -> Iterator[dict[str, str]]:
    """deb822 paragraphs, field names lowercased; continuation lines are skipped
    (the fields read here are single-line)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                yield fields
            fields = {}
        elif line[0] in " \t":
            continue
        else:
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip().lower(), value.strip())
    if fields:
        yield fields


def _text(body: bytes) -> str:
    return body.decode("utf-8", errors="replace")
