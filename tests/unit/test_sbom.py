"""SBOMs: package databases parsed, CycloneDX written, headline and diff read back."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from datetime import UTC, datetime
from typing import Any

import pytest

from orchestrator.core import sbom
from orchestrator.core.sbom import (
    SBOM_PATTERNS,
    SBOM_PRESENCE_PATTERNS,
    Change,
    Package,
    SbomError,
    build_sbom,
    find_packages,
    headline,
    parse_apk_installed,
    parse_dpkg_status,
    parse_python_metadata,
    pep503_name,
    render_diff,
)
from orchestrator.registry.imagefs import contents, select_files

DIGEST = "sha256:" + "ab" * 32
WHEN = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

DPKG_STATUS = """\
Package: curl
Status: install ok installed
Priority: optional
Architecture: amd64
Version: 7.88.1-10+deb12u5
Depends: libc6 (>= 2.34)
Description: command line tool for transferring data with URL syntax
 curl is a command line tool for transferring data with URL syntax,
 Package: not-a-field
 .
 supporting many protocols.

Package: libc6
Status: hold ok installed
Architecture: amd64
Multi-Arch: same
Version: 2.36-9+deb12u7

Package: libc6
Status: install ok installed
Architecture: i386
Version: 2.36-9+deb12u7

Package: removed-but-configured
Status: deinstall ok config-files
Architecture: all
Version: 1.0

Package: half
Status: install reinstreq half-installed
Architecture: all
Version: 2.0
"""

APK_INSTALLED = """\
C:Q1abc=
P:musl
V:1.2.5-r9
A:x86_64
S:411306
T:the musl c library (libc) implementation

C:Q1def=
P:busybox
V:1.37.0-r12
A:x86_64
o:busybox
"""

OS_DEBIAN = b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n' \
    b'VERSION_ID="12"\nVERSION_CODENAME=bookworm\nID=debian\n'
OS_ALPINE = b"NAME=\"Alpine Linux\"\nID=alpine\nVERSION_ID=3.21.3\n" \
    b"PRETTY_NAME=\"Alpine Linux v3.21\"\n"

SITE = "home/alpine/.pyenv/versions/3.13.5/lib/python3.13/site-packages"


def metadata(name: str, version: str) -> bytes:
    return (f"Metadata-Version: 2.3\nName: {name}\nVersion: {version}\nSummary: s\n\n"
            f"Name: from-the-description\nVersion: 0\n").encode()


def alpine_files(flask: str = "3.1.0", python: str = "3.13.5") -> dict[str, bytes | None]:
    site = SITE.replace("3.13.5", python)
    return {
        "etc/os-release": OS_ALPINE,
        "lib/apk/db/installed": APK_INSTALLED.encode(),
        f"home/alpine/.pyenv/versions/{python}/bin/python{python[:4]}": b"\x7fELF",
        f"home/alpine/.pyenv/versions/{python}/bin/python3": None,  # a symlink
        f"{site}/flask-{flask}.dist-info/METADATA": metadata("Flask", flask),
        f"{site}/zope.interface-7.2.dist-info/METADATA": metadata("zope.interface", "7.2"),
        f"{site}/Jinja2-3.1.6.dist-info/METADATA": metadata("Jinja2", "3.1.6"),
    }


def make(files: dict[str, bytes | None], tag: str | None = "3.1") -> dict[str, Any]:
    out = build_sbom(files, image_name="127.0.0.1:5000/base/flask", image_digest=DIGEST,
                     image_tag=tag, tool_version="0.1.0", timestamp=WHEN)
    loaded: dict[str, Any] = json.loads(out)
    return loaded


# --- parsing -----------------------------------------------------------------------------


def test_dpkg_status_lists_installed_packages_only() -> None:
    assert parse_dpkg_status(DPKG_STATUS) == [
        ("curl", "7.88.1-10+deb12u5", "amd64"),
        ("libc6", "2.36-9+deb12u7", "amd64"),  # held, still installed
        ("libc6", "2.36-9+deb12u7", "i386"),
    ]


def test_distroless_status_d_entries_need_no_status_field() -> None:
    text = "Package: tzdata\nVersion: 2025a-0+deb12u1\nArchitecture: all\n"
    assert parse_dpkg_status(text) == []
    assert parse_dpkg_status(text, distroless=True) == [("tzdata", "2025a-0+deb12u1", "all")]


def test_apk_installed_database() -> None:
    assert parse_apk_installed(APK_INSTALLED) == [("musl", "1.2.5-r9", "x86_64"),
                                                  ("busybox", "1.37.0-r12", "x86_64")]
    assert parse_apk_installed("P:noversion\n\nV:1\n") == []


def test_python_metadata_reads_headers_only() -> None:
    assert parse_python_metadata(metadata("Flask", "3.1.0").decode()) == ("Flask", "3.1.0")
    assert parse_python_metadata("Metadata-Version: 2.1\nName: x\n") is None


@pytest.mark.parametrize(("name", "normal"), [
    ("Flask", "flask"), ("zope.interface", "zope-interface"), ("Foo__Bar-.baz", "foo-bar-baz"),
    ("jinja2", "jinja2"),
])
def test_pep503_names(name: str, normal: str) -> None:
    assert pep503_name(name) == normal


def test_find_packages_covers_every_source_and_merges_duplicates() -> None:
    files = {
        **alpine_files(),
        "home/alpine/.pyenv/versions/3.12.9/bin/python3.12": b"\x7fELF",
        "home/alpine/.pyenv/versions/3.12.9/lib/python3.12/site-packages/"
        "flask-3.1.0.dist-info/METADATA": metadata("flask", "3.1.0"),
        "home/alpine/.pyenv/versions/pypy3.10-7.3.17/bin/python": b"\x7fELF",
        "home/alpine/.pyenv/versions/3.14.0rc1t/bin/python3.14t": b"\x7fELF",
        "home/alpine/.pyenv/versions/3.13.5/envs/app/bin/python": None,
    }
    packages = {(p.ecosystem, p.name, p.version): p for p in find_packages(files)}
    assert sorted(packages) == [
        ("apk", "busybox", "1.37.0-r12"), ("apk", "musl", "1.2.5-r9"),
        ("cpython", "cpython", "3.12.9"), ("cpython", "cpython", "3.13.5"),
        ("cpython", "cpython", "3.14.0rc1t"),
        ("pypi", "flask", "3.1.0"), ("pypi", "jinja2", "3.1.6"),
        ("pypi", "zope-interface", "7.2"),
    ]
    flask = packages[("pypi", "flask", "3.1.0")]
    assert len(flask.locations) == 2  # one component, both site-packages
    assert packages[("cpython", "cpython", "3.13.5")].locations == \
        ("/home/alpine/.pyenv/versions/3.13.5",)
    assert packages[("apk", "musl", "1.2.5-r9")] == Package(
        "apk", "musl", "1.2.5-r9", "x86_64", ("/lib/apk/db/installed",))


# --- writing -----------------------------------------------------------------------------


def test_cyclonedx_document_describes_the_image() -> None:
    doc = make(alpine_files())
    assert (doc["bomFormat"], doc["specVersion"], doc["version"]) == ("CycloneDX", "1.6", 1)
    assert doc["serialNumber"].startswith("urn:uuid:")
    image = doc["metadata"]["component"]
    assert image["type"] == "container"
    assert image["name"] == "127.0.0.1:5000/base/flask"
    assert image["version"] == "3.1"
    assert image["hashes"] == [{"alg": "SHA-256", "content": "ab" * 32}]
    assert image["purl"].startswith("pkg:oci/flask@sha256:")
    assert doc["metadata"]["tools"]["components"][0]["name"] == "orchestrator"
    purls = sorted(c.get("purl", c["name"]) for c in doc["components"])
    assert purls == [
        "alpine",  # the operating-system component
        "pkg:apk/alpine/busybox@1.37.0-r12?arch=x86_64",
        "pkg:apk/alpine/musl@1.2.5-r9?arch=x86_64",
        "pkg:generic/cpython@3.13.5",
        "pkg:pypi/flask@3.1.0",
        "pkg:pypi/jinja2@3.1.6",
        "pkg:pypi/zope-interface@7.2",
    ]
    # The image depends on everything in it: a complete dependency graph.
    root = next(d for d in doc["dependencies"] if d["ref"] == image["bom-ref"])
    assert len(root["dependsOn"]) == len(doc["components"])


def test_debian_purls_carry_vendor_arch_and_distro() -> None:
    doc = make({"var/lib/dpkg/status": DPKG_STATUS.encode(),
                "etc/os-release": None, "usr/lib/os-release": OS_DEBIAN})
    purls = sorted(c["purl"] for c in doc["components"] if "purl" in c)
    assert purls == [
        "pkg:deb/debian/curl@7.88.1-10%2Bdeb12u5?arch=amd64&distro=debian-12",
        "pkg:deb/debian/libc6@2.36-9%2Bdeb12u7?arch=amd64&distro=debian-12",
        "pkg:deb/debian/libc6@2.36-9%2Bdeb12u7?arch=i386&distro=debian-12",
    ]
    ubuntu = make({"var/lib/dpkg/status": DPKG_STATUS.encode(),
                   "etc/os-release": b"ID=ubuntu\nVERSION_ID=\"24.04\"\n"})
    assert any(c.get("purl", "").startswith("pkg:deb/ubuntu/curl@") and "distro=ubuntu-24.04"
               in c["purl"] for c in ubuntu["components"])
    bare = make({"var/lib/dpkg/status": DPKG_STATUS.encode()})  # no os-release at all
    assert "pkg:deb/debian/curl@7.88.1-10%2Bdeb12u5?arch=amd64" in \
        [c.get("purl") for c in bare["components"]]


def test_output_is_valid_cyclonedx_1_6() -> None:
    pytest.importorskip("jsonschema")
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    text = build_sbom({**alpine_files(), "var/lib/dpkg/status": DPKG_STATUS.encode()},
                      image_name="r/x", image_digest=DIGEST, tool_version="0.1.0")
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text.decode()) is None


def test_same_image_same_bytes() -> None:
    first = build_sbom(alpine_files(), image_name="r/x", image_digest=DIGEST,
                       tool_version="0.1.0", timestamp=WHEN)
    again = build_sbom(dict(reversed(alpine_files().items())), image_name="r/x",
                       image_digest=DIGEST, tool_version="0.1.0", timestamp=WHEN)
    assert first == again


def test_untagged_image_and_bad_digest() -> None:
    assert make({}, tag=None)["metadata"]["component"]["version"] == DIGEST
    with pytest.raises(SbomError, match="digest"):
        build_sbom({}, image_name="r/x", image_digest="sha256:nope", tool_version="0")


# --- reading -----------------------------------------------------------------------------


def test_headline_for_explain() -> None:
    assert headline(make(alpine_files())) == {
        "os": "alpine 3.21.3", "components": 6,
        "ecosystems": {"apk": 2, "generic": 1, "pypi": 3},
        "python": ["3.13.5"], "flask": ["3.1.0"],
    }
    text = build_sbom({"var/lib/dpkg/status": DPKG_STATUS.encode()}, image_name="r/x",
                      image_digest=DIGEST, tool_version="0")
    assert headline(text) == {"os": None, "components": 3, "ecosystems": {"deb": 3},
                              "python": [], "flask": []}


def test_diff_lists_added_removed_and_changed() -> None:
    old = make(alpine_files(flask="3.0.3", python="3.13.4"))
    new_files = alpine_files(flask="3.1.0", python="3.13.5")
    new_files["lib/apk/db/installed"] = (
        APK_INSTALLED.replace("P:busybox\nV:1.37.0-r12", "P:curl\nV:8.12.1-r1")).encode()
    new = make(new_files)
    changes = sbom.diff(old, new)
    assert changes == [
        Change("-", "apk", "busybox", "x86_64", "1.37.0-r12", None),
        Change("+", "apk", "curl", "x86_64", None, "8.12.1-r1"),
        Change("~", "generic", "cpython", None, "3.13.4", "3.13.5"),
        Change("~", "pypi", "flask", None, "3.0.3", "3.1.0"),
    ]
    assert render_diff(changes).splitlines() == [
        "- apk busybox 1.37.0-r12",
        "+ apk curl 8.12.1-r1",
        "~ generic cpython 3.13.4 -> 3.13.5",
        "~ pypi flask 3.0.3 -> 3.1.0",
    ]
    assert sbom.diff(new, new) == []


def test_diff_lines_in_the_documented_form() -> None:
    assert Change("~", "pypi", "flask", None, "3.0.3", "3.1.0").render() == \
        "~ pypi flask 3.0.3 -> 3.1.0"
    assert Change("+", "deb", "curl", "amd64", None, "7.88.1-10").render() == \
        "+ deb curl 7.88.1-10"
    assert Change("-", "apk", "busybox", "x86_64", "1.36", None).render() == "- apk busybox 1.36"


def test_diff_keeps_architectures_apart_and_shows_them_when_needed() -> None:
    old = make({"var/lib/dpkg/status": DPKG_STATUS.encode()})
    upgraded = DPKG_STATUS.replace("Architecture: i386\nVersion: 2.36-9+deb12u7",
                                   "Architecture: i386\nVersion: 2.36-9+deb12u9")
    upgraded = upgraded.replace("Architecture: amd64\nMulti-Arch: same\nVersion: 2.36-9+deb12u7",
                                "Architecture: amd64\nMulti-Arch: same\nVersion: 2.36-9+deb12u9")
    changes = sbom.diff(old, make({"var/lib/dpkg/status": upgraded.encode()}))
    assert render_diff(changes).splitlines() == [
        "~ deb libc6:amd64 2.36-9+deb12u7 -> 2.36-9+deb12u9",
        "~ deb libc6:i386 2.36-9+deb12u7 -> 2.36-9+deb12u9",
    ]


def test_diff_of_several_versions_of_one_name_compares_sets() -> None:
    two = alpine_files()
    two["home/alpine/.pyenv/versions/3.12.9/lib/python3.12/site-packages/"
        "flask-3.0.3.dist-info/METADATA"] = metadata("flask", "3.0.3")
    changes = sbom.diff(make(alpine_files()), make(two))
    assert [c.render() for c in changes] == ["~ pypi flask 3.1.0 -> 3.0.3, 3.1.0"]


def test_diff_and_headline_read_other_producers_sboms() -> None:
    foreign = {"bomFormat": "CycloneDX", "specVersion": "1.5", "components": [
        {"type": "library", "name": "Flask", "version": "3.1.0",
         "purl": "pkg:pypi/flask@3.1.0?file_name=x.whl#sub"},
        {"type": "file", "name": "/etc/passwd"},
    ]}
    assert headline(foreign)["ecosystems"] == {"file": 1, "pypi": 1}
    assert headline(foreign)["flask"] == ["3.1.0"]
    assert [c.render() for c in sbom.diff({"bomFormat": "CycloneDX"}, foreign)] == \
        ["+ file /etc/passwd", "+ pypi flask 3.1.0"]


@pytest.mark.parametrize(("document", "message"), [
    (b"{", "not JSON"), ({"bomFormat": "SPDX"}, "not a CycloneDX"),
    ({"bomFormat": "CycloneDX", "components": {}}, "components"),
    ({"bomFormat": "CycloneDX", "components": [{"name": 1}]}, r"components\[0\]"),
])
def test_unreadable_sboms(document: Any, message: str) -> None:
    with pytest.raises(SbomError, match=message):
        headline(document)


# --- end to end from layers ------------------------------------------------------------


def _layer(files: dict[str, bytes]) -> io.BytesIO:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return io.BytesIO(gzip.compress(raw.getvalue()))


def test_layers_to_sbom() -> None:
    os_layer = _layer({"etc/os-release": OS_ALPINE, "lib/apk/db/installed":
                       APK_INSTALLED.encode(), "bin/busybox": b"\x7fELF" * 1000})
    python_layer = _layer({
        "home/alpine/.pyenv/versions/3.13.5/bin/python3.13": b"\x7fELF",
        f"{SITE}/pip-25.0.dist-info/METADATA": metadata("pip", "25.0"),
        f"{SITE}/pip-25.0.dist-info/RECORD": b"unselected",
    })
    flask_layer = _layer({
        f"{SITE}/.wh.pip-25.0.dist-info": b"",
        f"{SITE}/pip-25.1.dist-info/METADATA": metadata("pip", "25.1"),
        f"{SITE}/flask-3.1.0.dist-info/METADATA": metadata("Flask", "3.1.0"),
    })
    files = select_files([os_layer, python_layer, flask_layer], SBOM_PATTERNS,
                         presence=SBOM_PRESENCE_PATTERNS)
    assert files["home/alpine/.pyenv/versions/3.13.5/bin/python3.13"].data is None
    doc = make(contents(files))
    assert headline(doc) == {"os": "alpine 3.21.3", "components": 5,
                             "ecosystems": {"apk": 2, "generic": 1, "pypi": 2},
                             "python": ["3.13.5"], "flask": ["3.1.0"]}
    assert "pkg:pypi/pip@25.1" in [c.get("purl") for c in doc["components"]]
