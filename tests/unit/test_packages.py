"""Which layer installed what: package records read from layer blobs, incrementally."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from datetime import UTC, datetime
from typing import IO

import pytest

from orchestrator.core.packages import (
    INSTALLED_BY,
    INSTALLED_IN,
    PackageRecord,
    record_from_json,
    record_to_json,
)
from orchestrator.core.sbom import sbom_document
from orchestrator.registry.layerpackages import Boundary, read_records

SITE = "usr/local/lib/python3.11/site-packages"
OS_RELEASE = b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
SOURCES = b"deb http://deb.debian.org/debian bookworm main\n" \
          b"deb http://deb.debian.org/debian-security bookworm-security main\n"


def dpkg(*packages: tuple[str, str] | tuple[str, str, str]) -> bytes:
    """A dpkg status file: (name, version) or (name, version, "hold")."""
    out = []
    for entry in packages:
        name, version = entry[0], entry[1]
        want = entry[2] if len(entry) > 2 else "install"
        source = "Source: openssl\n" if name.startswith("libssl") else ""
        out.append(f"Package: {name}\nStatus: {want} ok installed\n{source}"
                   f"Architecture: amd64\nVersion: {version}\nDescription: x\n more\n")
    return "\n".join(out).encode()


def metadata(name: str, version: str) -> bytes:
    return f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nbody\n".encode()


class Blob:
    """One layer: its bytes (gzip tar) and digest."""

    def __init__(self, *entries: tuple[str, bytes | tuple[str, str]]) -> None:
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, body in entries:
                info = tarfile.TarInfo(name)
                if isinstance(body, tuple):
                    info.type = tarfile.SYMTYPE if body[0] == "->" else tarfile.LNKTYPE
                    info.linkname = body[1]
                    tar.addfile(info)
                else:
                    info.size = len(body)
                    tar.addfile(info, io.BytesIO(body))
        self.data = gzip.compress(raw.getvalue(), mtime=0)
        self.digest = "sha256:" + hashlib.sha256(self.data).hexdigest()

    def open(self) -> IO[bytes]:
        return io.BytesIO(self.data)


BASE = Blob(("etc/os-release", OS_RELEASE), ("etc/apt/sources.list", SOURCES),
            ("var/lib/dpkg/status", dpkg(("libc6", "2.36-9+deb12u7"), ("curl", "7.88.1-10"),
                                         ("libssl3", "3.0.15-1~deb12u1"))),
            ("bin/sh", b"\x7fELF"))
# os: one RUN installs hello and upgrades libssl3; another adds a Python distribution.
OS_APT = Blob(("var/lib/dpkg/status", dpkg(("libc6", "2.36-9+deb12u7"), ("curl", "7.88.1-10"),
                                           ("libssl3", "3.0.16-1~deb12u1"),
                                           ("hello", "2.10-3"))),
              ("usr/bin/hello", b"\x7fELF"))
OS_PIP = Blob((f"{SITE}/pip-24.0.dist-info/METADATA", metadata("pip", "24.0")))
# app: uninstalls pip (a whiteout), installs flask, holds curl
APP = Blob((f"{SITE}/.wh.pip-24.0.dist-info", b""),
           (f"{SITE}/flask-3.1.0.dist-info/METADATA", metadata("Flask", "3.1.0")),
           ("var/lib/dpkg/status", dpkg(("libc6", "2.36-9+deb12u7"), ("curl", "7.88.1-10", "hold"),
                                        ("libssl3", "3.0.16-1~deb12u1"), ("hello", "2.10-3"))))

UPSTREAM_DIGEST = "sha256:" + "1" * 64
OS_DIGEST = "sha256:" + "2" * 64
APP_DIGEST = "sha256:" + "3" * 64


def read(blobs: list[Blob], *, digest: str, owner: str, start: PackageRecord | None = None,
         boundaries: tuple[Boundary, ...] = (), all_layers: list[Blob] | None = None
         ) -> list[PackageRecord]:
    layers = [b.digest for b in (all_layers or blobs)]
    return read_records((b.open() for b in blobs), layers=layers, digest=digest, owner=owner,
                        start=start, boundaries=boundaries)


def who(record: PackageRecord) -> dict[str, tuple[str, str]]:
    return {f"{p.ecosystem}:{p.name}": (p.version, p.installed_by)
            for p in record.installed()}


@pytest.fixture
def upstream() -> PackageRecord:
    [record] = read([BASE], digest=UPSTREAM_DIGEST, owner="upstream:debian")
    return record


def test_an_upstreams_packages_belong_to_the_upstream(upstream: PackageRecord) -> None:
    assert who(upstream) == {"deb:curl": ("7.88.1-10", "upstream:debian"),
                             "deb:libc6": ("2.36-9+deb12u7", "upstream:debian"),
                             "deb:libssl3": ("3.0.15-1~deb12u1", "upstream:debian")}
    libssl = next(p for p in upstream.installed() if p.name == "libssl3")
    assert (libssl.source, libssl.location, libssl.layer) == \
        ("openssl", "/var/lib/dpkg/status", BASE.digest)
    assert upstream.release() is not None and upstream.release().id == "debian"  # type: ignore[union-attr]
    assert upstream.texts()["etc/apt/sources.list"] == SOURCES.decode()


def test_a_layer_owns_what_it_added_or_changed_and_inherits_the_rest(
        upstream: PackageRecord) -> None:
    [record] = read([OS_APT, OS_PIP], digest=OS_DIGEST, owner="os", start=upstream,
                    all_layers=[BASE, OS_APT, OS_PIP])
    assert who(record) == {"deb:curl": ("7.88.1-10", "upstream:debian"),
                           "deb:libc6": ("2.36-9+deb12u7", "upstream:debian"),
                           "deb:libssl3": ("3.0.16-1~deb12u1", "os"),  # upgraded here
                           "deb:hello": ("2.10-3", "os"),
                           "pypi:pip": ("24.0", "os")}
    assert [p.name for p in record.own()] == ["hello", "libssl3", "pip"]
    # Each package names the image layer that wrote its version.
    layer_of = {p.name: p.layer for p in record.installed()}
    assert layer_of["hello"] == OS_APT.digest and layer_of["pip"] == OS_PIP.digest
    assert record.base == UPSTREAM_DIGEST and record.layers == (BASE.digest, OS_APT.digest,
                                                               OS_PIP.digest)


def test_reading_only_the_own_layers_equals_reading_every_layer(upstream: PackageRecord) -> None:
    [os_record] = read([OS_APT, OS_PIP], digest=OS_DIGEST, owner="os", start=upstream,
                       all_layers=[BASE, OS_APT, OS_PIP])
    [app] = read([APP], digest=APP_DIGEST, owner="app", start=os_record,
                 all_layers=[BASE, OS_APT, OS_PIP, APP])
    # The same, from the bottom in one pass, with where each ancestor ends.
    full = read([BASE, OS_APT, OS_PIP, APP], digest=APP_DIGEST, owner="app", boundaries=(
        Boundary("upstream:debian", UPSTREAM_DIGEST, 1), Boundary("os", OS_DIGEST, 3)))
    assert [r.digest for r in full] == [UPSTREAM_DIGEST, OS_DIGEST, APP_DIGEST]
    assert full[0] == upstream and full[1] == os_record and full[2] == app
    assert who(app) == {"deb:curl": ("7.88.1-10", "upstream:debian"),
                        "deb:libc6": ("2.36-9+deb12u7", "upstream:debian"),
                        "deb:libssl3": ("3.0.16-1~deb12u1", "os"),
                        "deb:hello": ("2.10-3", "os"),
                        "pypi:flask": ("3.1.0", "app")}  # pip was removed by app
    assert app.held() == {"curl"}
    assert sbom(app) == sbom(full[2])


def test_an_ancestor_without_a_boundary_is_attributed_to_the_next_one_known() -> None:
    # The os image's layer count is unknown: what it installed is the app's.
    [app] = read([BASE, OS_APT, OS_PIP, APP], digest=APP_DIGEST, owner="app",
                 boundaries=(Boundary("upstream:debian", UPSTREAM_DIGEST, 1),))[1:]
    assert who(app)["deb:hello"] == ("2.10-3", "app")
    assert who(app)["deb:curl"] == ("7.88.1-10", "upstream:debian")


def test_an_image_without_own_layers_has_its_parents_packages(
        upstream: PackageRecord) -> None:
    [record] = read([], digest=OS_DIGEST, owner="labels-only", start=upstream,
                    all_layers=[BASE])
    assert who(record) == who(upstream) and record.own() == []


def test_a_start_that_is_not_the_images_base_is_refused(upstream: PackageRecord) -> None:
    with pytest.raises(ValueError, match="are not the first 1"):
        read([APP], digest=APP_DIGEST, owner="app", start=upstream, all_layers=[OS_APT, APP])


def test_a_hard_link_to_a_recorded_file_keeps_its_packages(upstream: PackageRecord) -> None:
    os_layer = Blob((f"{SITE}/pip-24.0.dist-info/METADATA", metadata("pip", "24.0")))
    [os_record] = read([os_layer], digest=OS_DIGEST, owner="os", start=upstream,
                       all_layers=[BASE, os_layer])
    linked = Blob((f"opt/venv/{SITE}/pip-24.0.dist-info/METADATA",
                   ("=>", f"{SITE}/pip-24.0.dist-info/METADATA")))
    [app] = read([linked], digest=APP_DIGEST, owner="app", start=os_record,
                 all_layers=[BASE, os_layer, linked])
    pips = sorted((p.location, p.installed_by) for p in app.installed() if p.name == "pip")
    assert pips == [(f"/opt/venv/{SITE}/pip-24.0.dist-info/METADATA", "app"),
                    (f"/{SITE}/pip-24.0.dist-info/METADATA", "os")]


def test_records_survive_their_storage_form(upstream: PackageRecord) -> None:
    [os_record] = read([OS_APT, OS_PIP], digest=OS_DIGEST, owner="os", start=upstream,
                       all_layers=[BASE, OS_APT, OS_PIP])
    [app] = read([APP], digest=APP_DIGEST, owner="app", start=os_record,
                 all_layers=[BASE, OS_APT, OS_PIP, APP])
    for record in (upstream, os_record, app):
        assert record_from_json(record_to_json(record)) == record
    with pytest.raises(ValueError, match="format"):
        record_from_json(json.dumps({"format": 99}))


def sbom(record: PackageRecord) -> bytes:
    return sbom_document(record.sbom_packages(), record.release(),
                         image_name="127.0.0.1:5000/x/app", image_digest=record.digest,
                         tool_version="0", timestamp=datetime(2026, 1, 1, tzinfo=UTC))


def test_the_sbom_says_which_layer_installed_each_component(upstream: PackageRecord) -> None:
    [os_record] = read([OS_APT, OS_PIP], digest=OS_DIGEST, owner="os", start=upstream,
                       all_layers=[BASE, OS_APT, OS_PIP])
    document = json.loads(sbom(os_record))
    props = {c["name"]: {p["name"]: p["value"] for p in c.get("properties", [])}
             for c in document["components"]}
    assert props["hello"][INSTALLED_BY] == "os"
    assert props["hello"][INSTALLED_IN] == OS_APT.digest
    assert props["curl"][INSTALLED_BY] == "upstream:debian"
    assert props["libssl3"]["orchestrator:source-package"] == "openssl"
    assert props["debian"] == {}  # the operating-system component
