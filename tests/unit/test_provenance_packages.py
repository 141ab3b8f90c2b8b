"""Package index snapshots in provenance, and the SBOM diff between two builds of a fix."""

from __future__ import annotations

import json

import pytest

from orchestrator.core.provenance import (
    PackageIndex,
    ProvenanceError,
    build_statement,
    encode_statement,
    read_statement,
)
from orchestrator.core.sbom import Package, diff, render_diff, sbom_document
from tests.unit.test_provenance import facts

SECURITY = PackageIndex("bookworm-security",
                        "http://deb.debian.org/debian-security/dists/bookworm-security/InRelease",
                        "sha256:" + "7" * 64, "Sat, 29 Nov 2026 10:00:00 UTC")
MAIN = PackageIndex("bookworm", "http://deb.debian.org/debian/dists/bookworm/InRelease",
                    "sha256:" + "8" * 64)


def test_resolved_dependencies_list_the_index_snapshots() -> None:
    statement = build_statement(facts(package_indexes=[SECURITY, MAIN]))
    listed = [d for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]
              if d["name"].startswith("packages:")]
    assert listed == [
        {"name": "packages:bookworm", "uri": MAIN.url, "digest": {"sha256": "8" * 64}},
        {"name": "packages:bookworm-security", "uri": SECURITY.url,
         "digest": {"sha256": "7" * 64}, "annotations": {"date": SECURITY.date}},
    ]
    summary = read_statement(encode_statement(statement))
    read = {d.name: d for d in summary.dependencies}
    assert read["packages:bookworm-security"].annotations == {"date": SECURITY.date}
    assert read["packages:bookworm-security"].digest == {"sha256": "7" * 64}


def test_without_indexes_the_statement_is_as_before() -> None:
    assert build_statement(facts()) == build_statement(facts(package_indexes=()))


def test_bad_index_snapshots_are_refused() -> None:
    with pytest.raises(ProvenanceError, match="package index"):
        build_statement(facts(package_indexes=[PackageIndex("x", "http://x", "md5:1")]))
    with pytest.raises(ProvenanceError, match="listed twice"):
        build_statement(facts(package_indexes=[SECURITY, SECURITY]))


def test_sbom_diff_between_two_builds_shows_the_fixed_version() -> None:
    def document(version: str, digest: str) -> bytes:
        return sbom_document([Package("deb", "libssl3", version, "amd64",
                                      ("/var/lib/dpkg/status",), "openssl",
                                      (("orchestrator:installed-by", "os"),))],
                             None, image_name="r/os", image_digest=digest, tool_version="0")

    before = document("3.0.15-1~deb12u1", "sha256:" + "1" * 64)
    after = document("3.0.16-1~deb12u1", "sha256:" + "2" * 64)
    assert render_diff(diff(before, after)) == \
        "~ deb libssl3 3.0.15-1~deb12u1 -> 3.0.16-1~deb12u1"
    component = json.loads(after)["components"][0]
    assert {"name": "orchestrator:installed-by", "value": "os"} in component["properties"]
