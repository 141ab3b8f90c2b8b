"""Which layer installed what, end to end: a Debian chain built with buildah installs a
package from a loopback repository; the SBOM says which layer installed it; an app-only
rebuild reads only the app's layer; a new version in the index makes exactly that
layer stale, and its rebuild takes the fix (the decision and the check are the pure
functions the daemon will call; the daemon's wiring is not part of this test)."""

from __future__ import annotations

import asyncio
import functools
import http.server
import json
import sqlite3
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.packagefix import FixPolicy, LayerPackages, check_applied, find_fixes
from orchestrator.core.packages import INSTALLED_BY, PackageRecord, record_from_json
from orchestrator.core.pkgsources import AptSuite, image_sources
from orchestrator.registry.indexwatch import IndexSnapshot, IndexWatch
from tests.conftest import Project, Testbed, _testbed_settings, unique_namespace
from tests.integration.hierarchy import write_config
from tests.unit.test_indexwatch import Repo

pytestmark = pytest.mark.integration


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[tuple[Repo, str]]:
    root = tmp_path / "debian"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Repo(root), f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def records(project: Project) -> dict[str, PackageRecord]:
    db = sqlite3.connect(project.root / "state" / "packages.db")
    try:
        rows = db.execute("SELECT owner, record FROM package_records").fetchall()
    finally:
        db.close()
    out: dict[str, PackageRecord] = {}
    for _, blob in rows:
        record = record_from_json(zlib.decompress(blob))
        out[record.digest] = record
    return out


def saved_at(project: Project) -> dict[str, float]:
    db = sqlite3.connect(project.root / "state" / "packages.db")
    try:
        return dict(db.execute("SELECT digest, saved_at FROM package_records").fetchall())
    finally:
        db.close()


def sbom_components(project: Project, image: str) -> dict[str, dict[str, Any]]:
    out = project.cli("sbom", image)
    assert out.returncode == 0, out.stderr
    return {c["name"]: c for c in json.loads(out.stdout)["components"]}


def test_installed_by_layer_incremental_read_and_a_fix(project: Project, testbed: Testbed,
                                                       repo: tuple[Repo, str]) -> None:
    debian = _testbed_settings().get("ORCH_TEST_DEBIAN_IMAGE")
    if debian is None:
        pytest.skip("the test bed has no Debian seed image")
    apt, url = repo
    # No InRelease: apt takes an unsigned Release from a trusted=yes source, not a
    # clear-signed file whose signature does not verify.
    apt.publish({"hello-orch": "1.0-1"}, inrelease=False)
    namespace = unique_namespace()
    write_config(project, testbed, namespace, extra=f"""
        [upstream.debian]
        image = "{debian}"
        tag = "bookworm"
        tls_verify = false
    """)
    internal = f"deb [trusted=yes] {url} bookworm-security main"
    project.layer("os", 'from = "upstream:debian"\ntags = ["1"]\n', dockerfile=f"""
        ARG BASE_IMAGE
        FROM ${{BASE_IMAGE}}
        RUN echo "{internal}" > /etc/apt/sources.list.d/internal.list \\
         && apt-get update -o Dir::Etc::sourcelist=/etc/apt/sources.list.d/internal.list \\
              -o Dir::Etc::sourceparts=- \\
         && apt-get install -y hello-orch && rm -rf /var/lib/apt/lists/*
        USER 1000
    """)
    project.layer("app", 'from = "os"\ntags = ["1"]\n', dockerfile="""
        ARG BASE_IMAGE
        FROM ${BASE_IMAGE}
        COPY app.txt /app.txt
        USER 1000
    """, files={"app.txt": "one\n"})

    code, report, err = project.cli_json("build")
    assert code == 0, err
    digests = {e["layer"]: e["digest"] for e in report["layers"]}
    app_image = f"{testbed.registry}/{namespace}/app:1"
    components = sbom_components(project, app_image)
    props = {p["name"]: p["value"] for p in components["hello-orch"]["properties"]}
    assert props[INSTALLED_BY] == "os"  # "installed by layer os", in the app's SBOM
    libc = {p["name"]: p["value"] for p in components["libc6"]["properties"]}
    assert libc[INSTALLED_BY] == "upstream:debian"

    kept = records(project)
    assert {r.owner for r in kept.values()} == {"upstream:debian", "os", "app"}
    os_record = kept[digests["os"]]
    assert [p.name for p in os_record.own()] == ["hello-orch"]

    # An app-only edit: the app's record starts from the os record (nothing below is read
    # again, so the os and upstream records are not written again).
    before = saved_at(project)
    (project.layers / "app" / "app.txt").write_text("two\n")
    code, report, err = project.cli_json("build")
    assert code == 0, err
    after = saved_at(project)
    new_app = next(e["digest"] for e in report["layers"] if e["layer"] == "app")
    assert new_app in after and new_app not in before
    assert {d: t for d, t in after.items() if d in before} == before

    # The index publishes a fix: the decision names exactly the layer that installed it.
    apt.publish({"hello-orch": "1.1-1"}, inrelease=False)
    sources, problems = image_sources(os_record.texts())
    assert problems == []
    watched = [s for s in sources if isinstance(s, AptSuite) and s.uri == url]
    assert len(watched) == 1 and watched[0].trusted

    async def poll() -> IndexSnapshot:
        async with IndexWatch(project.root / "index-work", timeout_s=10) as watch:
            result = await watch.poll(watched[0], {"hello-orch"}, ["amd64"])
        assert isinstance(result, IndexSnapshot), result
        return result

    snapshot = asyncio.run(poll())
    kept = records(project)
    layers = [LayerPackages(layer, parent, kept[digests[layer] if layer == "os" else new_app]
                            .installed(), [s.id for s in sources])
              for layer, parent in (("os", "upstream:debian"), ("app", "os"))]
    fixes = find_fixes(layers, {snapshot.source: snapshot}, FixPolicy())
    assert fixes.stale() == {"os"}
    assert fixes.reason("os") == "package fix: hello-orch 1.0-1 -> 1.1-1 (bookworm-security)"

    # The lead's wiring rebuilds os for it (here: forced); the fix is then in the image.
    code, report, err = project.cli_json("build", "os", "--force")
    assert code == 0, err
    rebuilt = next(e["digest"] for e in report["layers"] if e["layer"] == "os")
    new_os = records(project)[rebuilt]
    assert check_applied(fixes.fixes["os"], new_os.installed(), held=new_os.held(),
                         texts=new_os.texts()) == []
    out = project.cli("sbom", f"{testbed.registry}/{namespace}/os:1", "--diff",
                      f"{testbed.registry}/{namespace}/os@{digests['os']}")
    assert out.returncode == 0, out.stderr
    assert "~ deb hello-orch 1.0-1 -> 1.1-1" in out.stdout.splitlines()
