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
import os
import sqlite3
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.packagefix import FixPolicy, LayerPackages, check_applied, find_fixes
from orchestrator.core.packages import INSTALLED_BY, PackageRecord, record_from_json
from orchestrator.core.pkgsources import AptSuite, image_sources
from orchestrator.registry.indexwatch import IndexSnapshot, IndexWatch
from tests.conftest import Project, Testbed, _testbed_settings, unique_namespace
from tests.integration.daemon_helpers import DaemonProcess, api, wait_until
from tests.integration.hierarchy import write_config
from tests.unit.test_indexwatch import Repo
from tests.webhook_receiver import HookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.long(2)]


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


# --- the daemon, end to end ----------------------------------------------------------------

POLL_S = 1.0
WINDOW_S = 2.0


class Archive(Repo):
    """A loopback ``bookworm-security``-style suite whose pool keeps every version
    published (so a Dockerfile may pin an older one), republished file by file
    with renames: a poll or an ``apt-get update`` never sees half of it."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.versions: dict[str, str] = {}

    def release(self, **versions: str) -> None:
        self.versions.update({name.replace("_", "-"): v for name, v in versions.items()})
        pool = self.root / "pool" / "main"
        pool.mkdir(parents=True, exist_ok=True)
        for name, version in self.versions.items():
            if not (pool / f"{name}_{version}_amd64.deb").exists():
                self._deb(pool, name, version)
        dists = self.root / "dists" / self.suite
        folder = dists / "main" / "binary-amd64"
        folder.mkdir(parents=True, exist_ok=True)
        listing = subprocess.run(["apt-ftparchive", "packages", "pool/main"], cwd=self.root,
                                 check=True, capture_output=True).stdout
        staged = folder / "Packages.new"
        staged.write_bytes(listing)
        subprocess.run(["xz", "-k", "-f", str(staged)], check=True)
        os.replace(staged, folder / "Packages")
        os.replace(folder / "Packages.new.xz", folder / "Packages.xz")
        release = subprocess.run(
            ["apt-ftparchive", "-o", f"APT::FTPArchive::Release::Suite={self.suite}",
             "-o", f"APT::FTPArchive::Release::Codename={self.suite}",
             "-o", "APT::FTPArchive::Release::Label=Debian-Security", "release", "."],
            cwd=dists, check=True, capture_output=True).stdout
        (dists / "Release.new").write_bytes(release)
        os.replace(dists / "Release.new", dists / "Release")


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[tuple[Archive, str]]:
    root = tmp_path / "archive"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Archive(root), f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def airgapped_base(testbed: Testbed, namespace: str, tmp: Path) -> str:
    """The host-made Debian seed with an empty sources.list, pushed as this test's
    upstream: an air-gapped base, so nothing here polls or installs from the real
    archive (whose state changes on its own)."""
    debian = _testbed_settings().get("ORCH_TEST_DEBIAN_IMAGE")
    if debian is None:
        pytest.skip("the test bed has no Debian seed image")
    empty = tmp / "sources.list"
    empty.write_text("")
    target = f"{testbed.registry}/{namespace}/debian"
    ctr = subprocess.run(["buildah", "from", "--tls-verify=false", f"{debian}:bookworm"],
                         check=True, capture_output=True, text=True).stdout.strip()
    try:
        subprocess.run(["buildah", "copy", ctr, str(empty), "/etc/apt/sources.list"],
                       check=True, capture_output=True)
        subprocess.run(["buildah", "commit", "--quiet", "--tls-verify=false", ctr,
                        f"docker://{target}:bookworm"], check=True, capture_output=True)
    finally:
        subprocess.run(["buildah", "rm", ctr], check=False, capture_output=True)
    return target


def at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def test_the_daemon_rebuilds_exactly_the_layer_that_installed_a_fixed_package(
        project: Project, testbed: Testbed, archive: tuple[Archive, str],
        tmp_path: Path) -> None:
    started = time.monotonic()
    apt, url = archive
    apt.release(hello_orch="1.0-1", child_pkg="1.0-1", pinned_pkg="1.0-1")
    namespace = unique_namespace()
    base = airgapped_base(testbed, namespace, tmp_path)
    source = f"deb [trusted=yes] {url} bookworm-security main"
    install = ("RUN echo '{source}' > /etc/apt/sources.list.d/internal.list \\\n"
               " && apt-get update && apt-get install -y {what} \\\n"
               " && rm -rf /var/lib/apt/lists/*\n")
    with HookReceiver() as hooks:
        config = f"""
            [catalog]
            layers = "layers"
            [registry]
            url = "{testbed.registry}/{namespace}"
            tls_verify = false
            [build]
            backend = "buildah"
            jobs = 2
            [state]
            dir = "state"
            [control]
            socket = "control.sock"
            [upstream.debian]
            image = "{base}"
            tag = "bookworm"
            tls_verify = false
            [[notify]]
            url = "{hooks.url('/hook')}"
            secret = "s"
            [packages]
            poll = "1s"
            window = "{{window}}"
        """
        project.write_config(config.replace("{window}", f"{WINDOW_S:g}s"))
        project.layer("os", 'from = "upstream:debian"\ntags = ["1"]\n', dockerfile=(
            "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n"
            + install.format(source=source, what="hello-orch") + "USER 1000\n"))
        project.layer("child", 'from = "os"\ntags = ["1"]\n', dockerfile=(
            "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nUSER root\n"
            "RUN apt-get update && apt-get install -y child-pkg && rm -rf /var/lib/apt/lists/*\n"
            "USER 1000\n"))
        project.layer("other", 'from = "upstream:debian"\ntags = ["1"]\n', dockerfile=(
            "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY note.txt /note.txt\nUSER 1000\n"),
            files={"note.txt": "unrelated\n"})
        project.layer("pinned", 'from = "upstream:debian"\ntags = ["1"]\n', dockerfile=(
            "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n"
            + install.format(source=source, what="pinned-pkg=1.0-1") + "USER 1000\n"))

        daemon = DaemonProcess(project).ready(120)
        try:
            sock = daemon.socket

            def packages() -> dict[str, Any]:
                return dict(api(sock, "GET", "/v1/status")[1]["packages"])

            def index() -> dict[str, Any] | None:
                found = [i for i in packages()["indexes"] if url in i["source"]]
                return found[0] if found and found[0]["checked_at"] else None

            def polled_twice_after(moment: float) -> None:
                # Two polls that began after ``moment``: the first saw the index as
                # published by then, and what it made had a poll's time to act.
                first = wait_until(lambda: (i := index()) is not None and
                                   i["checked_at"] > moment and i["checked_at"], 60,
                                   what="a poll")
                wait_until(lambda: (i := index()) is not None and i["checked_at"] > first,
                           60, what="another poll")

            def ids() -> set[str]:
                return {b["id"] for b in daemon.builds()}

            def built_since(before: set[str]) -> list[tuple[str, str]]:
                """(layer, cause) of the builds since, oldest first."""
                return [(b["layer"], b.get("cause") or "") for b in reversed(daemon.builds())
                        if b["id"] not in before and b["outcome"] == "built"]

            daemon.idle(300)
            wait_until(index, 60, what="the loopback index polled")
            assert packages()["pending"] == []
            assert {b["layer"] for b in daemon.builds()} == {"os", "child", "other", "pinned"}
            first = {b["layer"]: b for b in daemon.builds()}
            old_os = first["os"]
            setup_s = time.monotonic() - started

            # 1. A fixed version of what os installed: os and its descendant, nothing else.
            before = ids()
            published = time.time()
            apt.release(hello_orch="1.1-1")
            fix = wait_until(lambda: next((e for e in daemon.events()
                                           if e["event"] == "package_fix"), None),
                             60, what="the package_fix event")
            assert fix["layer"] == "os" and fix["rebuilds"] == ["os", "child"]
            # Within one poll plus the window (and what a loaded machine adds).
            assert at(fix) - published <= POLL_S * 1.1 + WINDOW_S + 5.0, at(fix) - published
            wait_until(lambda: {layer for layer, _ in built_since(before)} == {"os", "child"},
                       180, what="os and child rebuilt")
            daemon.idle(120)
            rebuilt = built_since(before)
            assert sorted(layer for layer, _ in rebuilt) == ["child", "os"], rebuilt
            reason = "package fix: hello-orch 1.0-1 -> 1.1-1 (bookworm-security)"
            history = api(sock, "GET", "/v1/builds?layer=os&limit=1")[1]["builds"][0]
            assert history["cause"].startswith(reason), history
            assert history["reason"] == reason, history
            child = api(sock, "GET", "/v1/builds?layer=child&limit=1")[1]["builds"][0]
            assert child["cause"].startswith(f"parent os: {reason}"), child

            # The new image has the fixed version (its dpkg status, read from the image).
            image = f"{testbed.registry}/{namespace}/os:1"
            assert sbom_components(project, image)["hello-orch"]["version"] == "1.1-1"
            out = project.cli("sbom", image, "--diff",
                              f"{testbed.registry}/{namespace}/os@{old_os['digest']}")
            assert out.returncode == 0, out.stderr
            assert "~ deb hello-orch 1.0-1 -> 1.1-1" in out.stdout.splitlines()
            out = project.cli("explain", image)
            assert out.returncode == 0, out.stderr
            assert f"because: {reason}" in out.stdout, out.stdout
            assert "package index bookworm-security:" in out.stdout, out.stdout
            assert "fixes: hello-orch 1.0-1 -> 1.1-1" in out.stdout, out.stdout

            def hook(kind: str) -> list[dict[str, Any]]:
                return [json.loads(r.body) for r in hooks.posts("/hook")
                        if r.headers.get("X-Orchestrator-Event") == kind]

            wait_until(lambda: hook("package_fix"), 30, what="the package_fix webhook")
            assert hook("package_fix")[0]["fixes"][0]["version"] == "1.1-1"
            wait_until(lambda: any(h["layer"] == "os" and h["cause"].startswith(reason)
                                   for h in hook("image_published")),
                       30, what="the image_published webhook naming the fix")

            # 2. The same index published again: nothing.
            before = ids()
            again = time.time()
            apt.release()
            polled_twice_after(again + WINDOW_S)
            assert ids() == before
            assert len([e for e in daemon.events() if e["event"] == "package_fix"]) == 1

            # 3. A fix for what only the child installed: the child alone.
            apt.release(child_pkg="1.1-1")
            wait_until(lambda: built_since(before), 120, what="the child's rebuild")
            daemon.idle(120)
            assert [layer for layer, _ in built_since(before)] == ["child"]
            assert built_since(before)[0][1].startswith(
                "package fix: child-pkg 1.0-1 -> 1.1-1 (bookworm-security)")

            # 4. A fix the Dockerfile prevents (a pinned version): one rebuild, then
            #    fix_not_applied with the reason, and no loop.
            before = ids()
            apt.release(pinned_pkg="1.1-1")
            stuck = wait_until(lambda: next((e for e in daemon.events()
                                             if e["event"] == "fix_not_applied"), None),
                               180, what="fix_not_applied")
            assert stuck["layer"] == "pinned"
            assert "pinned in the Dockerfile (pinned-pkg=1.0-1)" in stuck["fixes"][0]["why"]
            daemon.idle(120)
            quiet = time.time()
            polled_twice_after(quiet + WINDOW_S)
            assert [layer for layer, _ in built_since(before)] == ["pinned"]
            status = packages()
            assert status["pending"] == []
            assert [row["layer"] for row in status["not_applied"]] == ["pinned"]
            wait_until(lambda: hook("fix_not_applied"), 30, what="the fix_not_applied webhook")
            text = project.cli("status", "--socket", str(sock))
            assert "fix_not_applied: pinned-pkg is 1.0-1, not 1.1-1" in text.stdout, text.stdout

            # 5. window = 10s: three fixes published 2 s apart make one rebuild.
            project.write_config(config.replace("{window}", "10s"))
            assert api(sock, "POST", "/v1/reload")[0] == 200
            daemon.idle(120)
            before = ids()
            burst = time.time()
            for version in ("1.2-1", "1.3-1", "1.4-1"):
                apt.release(hello_orch=version)
                if version != "1.4-1":
                    time.sleep(2.0)  # the scenario itself: fixes 2 s apart
            opened = wait_until(lambda: [p for p in packages()["pending"]
                                         if p["layer"] == "os"], 30, what="a pending fix")[0]
            assert opened["window_closes_at"] - burst <= 10.0 + POLL_S * 1.1 + 2.0
            # While the window is open: status, metrics and a one-shot plan say so.
            text = project.cli("status", "--socket", str(sock)).stdout
            assert "package fixes (window 10s)" in text and "window closes in" in text, text
            metrics = api(sock, "GET", "/metrics")[1]
            assert 'orchestrator_package_fixes_pending{layer="os"} 1.0' in metrics, metrics
            assert "orchestrator_package_fix_oldest_unapplied_seconds" in metrics
            plan = project.cli("plan")
            assert "(layer os): rebuilds os, child" in plan.stdout, plan.stdout + plan.stderr
            wait_until(lambda: {layer for layer, _ in built_since(before)} >= {"os", "child"},
                       180, what="the rebuild after the window")
            daemon.idle(120)
            assert sorted(layer for layer, _ in built_since(before)) == ["child", "os"]
            fixes = [e for e in daemon.events() if e["event"] == "package_fix" and
                     at(e) > burst]
            assert len(fixes) == 1 and at(fixes[0]) - burst >= 9.0, fixes
            assert sbom_components(project, image)["hello-orch"]["version"] == "1.4-1"
            before = ids()
        finally:
            assert daemon.stop() == 0, daemon.logs()[-3000:]

        # 6. A restart with packages.db gone: the records are read again from the
        #    registry (each image's own layers), the index is watched again at once, and
        #    nothing is rebuilt (pinned's fix stays not applied: its key covers it).
        for leftover in (project.root / "state").glob("packages.db*"):
            leftover.unlink()
        daemon = DaemonProcess(project).ready(120)
        try:
            sock = daemon.socket
            found = wait_until(lambda: index() if index() and index()["layers"] else None,
                               120, what="the index watched again")
            assert found["layers"] == ["child", "os", "pinned"], found
            daemon.idle(120)
            polled_twice_after(time.time())
            assert ids() == before
            assert packages()["pending"] == []
            assert not [e for e in daemon.events() if e["event"] in (
                "package_record_unreadable", "package_fix")]
            print(f"\npackage fix acceptance: setup {setup_s:.1f}s, "
                  f"all {time.monotonic() - started:.1f}s")
        finally:
            assert daemon.stop() == 0, daemon.logs()[-3000:]
