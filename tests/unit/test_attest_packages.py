"""The attestor's package records: read once per image, incrementally from the parent's."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from orchestrator.build.attest import Ancestor, Attestor, AttestSettings
from orchestrator.build.packagestore import PackageStore
from orchestrator.core.imageref import ImageRef, parse_repository
from orchestrator.registry.client import Manifest
from tests.unit.test_packages import APP, BASE, OS_APT, OS_PIP, Blob


class FakeRegistry:
    """Manifests and blobs by digest; counts what is downloaded."""

    def __init__(self) -> None:
        self.manifests: dict[str, bytes] = {}
        self.blobs: dict[str, bytes] = {}
        self.downloaded: list[str] = []
        self.manifest_reads: list[str] = []

    def image(self, *layers: Blob) -> str:
        for blob in layers:
            self.blobs[blob.digest] = blob.data
        body = json.dumps({"schemaVersion": 2, "layers": [
            {"digest": b.digest, "size": len(b.data)} for b in layers]}).encode()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self.manifests[digest] = body
        return digest

    async def get_manifest(self, ref: ImageRef, reference: str) -> Manifest | None:
        self.manifest_reads.append(reference)
        body = self.manifests.get(reference)
        return Manifest(reference, "application/vnd.oci.image.manifest.v1+json", body) \
            if body is not None else None

    async def download_blob(self, ref: ImageRef, digest: str, dest: Path) -> None:
        self.downloaded.append(digest)
        dest.write_bytes(self.blobs[digest])


REPO = "127.0.0.1:5000/base/x"


async def test_each_image_reads_only_its_own_layers(tmp_path: Path) -> None:
    registry = FakeRegistry()
    upstream = registry.image(BASE)
    os_image = registry.image(BASE, OS_APT, OS_PIP)
    app = registry.image(BASE, OS_APT, OS_PIP, APP)
    store = PackageStore(tmp_path / "packages.db")
    attestor = Attestor(registry, AttestSettings(), store)  # type: ignore[arg-type]
    repo = parse_repository(REPO)

    async def record(digest: str, owner: str, lineage: list[Ancestor]) -> dict[str, str]:
        manifest = await registry.get_manifest(repo, digest)
        assert manifest is not None
        found = await attestor.record(repo, manifest, owner, lineage, tmp_path)
        return {p.name: p.installed_by for p in found.installed()}

    up = Ancestor("upstream:debian", "127.0.0.1:5000/seed/debian", upstream)
    # The first layer on the upstream: its layers are read once, the upstream's split off.
    assert (await record(os_image, "os", [up]))["hello"] == "os"
    assert registry.downloaded == [BASE.digest, OS_APT.digest, OS_PIP.digest]
    upstream_record = store.record(upstream)
    assert upstream_record is not None and upstream_record.owner == "upstream:debian"

    registry.downloaded.clear()
    owners = await record(app, "app", [up, Ancestor("os", REPO, os_image)])
    assert registry.downloaded == [APP.digest]  # the parent's record stands in for the rest
    assert owners == {"curl": "upstream:debian", "libc6": "upstream:debian",
                      "libssl3": "os", "hello": "os", "flask": "app"}

    # The same image again (a reproducible rebuild): nothing is read.
    registry.downloaded.clear()
    await record(app, "app", [up, Ancestor("os", REPO, os_image)])
    assert registry.downloaded == []


async def test_without_records_the_lineage_manifests_split_one_read(tmp_path: Path) -> None:
    registry = FakeRegistry()
    upstream = registry.image(BASE)
    os_image = registry.image(BASE, OS_APT, OS_PIP)
    app = registry.image(BASE, OS_APT, OS_PIP, APP)
    store = PackageStore(tmp_path / "packages.db")
    attestor = Attestor(registry, AttestSettings(), store)  # type: ignore[arg-type]
    repo = parse_repository(REPO)
    manifest = await registry.get_manifest(repo, app)
    assert manifest is not None
    found = await attestor.record(repo, manifest, "app", [
        Ancestor("upstream:debian", REPO, upstream), Ancestor("os", REPO, os_image),
        ], tmp_path)
    assert {p.name: p.installed_by for p in found.own()} == {"flask": "app"}
    os_record = store.record(os_image)
    assert os_record is not None and {p.name for p in os_record.own()} == \
        {"hello", "libssl3", "pip"}
    assert not list(tmp_path.glob("sbom-layers/*"))  # the blobs are removed


async def test_an_ancestor_that_cannot_be_found_counts_as_the_next_one(
        tmp_path: Path) -> None:
    registry = FakeRegistry()
    os_image = registry.image(BASE, OS_APT, OS_PIP)
    attestor = Attestor(registry, AttestSettings(), None)  # type: ignore[arg-type]
    repo = parse_repository(REPO)
    manifest = await registry.get_manifest(repo, os_image)
    assert manifest is not None
    gone = Ancestor("upstream:debian", REPO, "sha256:" + "9" * 64)
    found = await attestor.record(repo, manifest, "os", [gone], tmp_path)
    assert {p.installed_by for p in found.installed()} == {"os"}


async def test_a_failing_record_cache_costs_reads_not_the_sbom(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    registry = FakeRegistry()
    os_image = registry.image(BASE, OS_APT, OS_PIP)
    store = PackageStore(tmp_path / "packages.db")

    def broken(*_: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "save", broken)
    monkeypatch.setattr(store, "record", broken)
    attestor = Attestor(registry, AttestSettings(), store)  # type: ignore[arg-type]
    repo = parse_repository(REPO)
    manifest = await registry.get_manifest(repo, os_image)
    assert manifest is not None
    found = await attestor.record(repo, manifest, "os", [], tmp_path)
    assert {p.name for p in found.own()} >= {"hello"}
    assert "not kept: database or disk is full" in caplog.text
