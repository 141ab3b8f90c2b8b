"""Polling package indexes: a real Debian repository on loopback (dpkg-deb, apt-ftparchive),
an APKINDEX.tar.gz, and the ways a mirror goes wrong."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from orchestrator.core.pkgindex import IndexEntry
from orchestrator.core.pkgsources import ApkRepository, AptSuite
from orchestrator.registry.indexwatch import (
    IndexFailure,
    IndexPoller,
    IndexSnapshot,
    IndexState,
    IndexUnchanged,
    IndexWatch,
)

pytestmark = pytest.mark.skipif(
    shutil.which("apt-ftparchive") is None or shutil.which("dpkg-deb") is None,
    reason="needs apt-ftparchive (apt-utils) and dpkg-deb: scripts/testbed installs them")


class Repo:
    """A Debian repository in a folder: publish() rewrites pool, Packages and Release."""

    def __init__(self, root: Path, suite: str = "bookworm-security") -> None:
        self.root = root
        self.suite = suite

    def publish(self, packages: dict[str, str], *, component: str = "main",
                extra_components: dict[str, dict[str, str]] | None = None,
                inrelease: bool = True, by_hash: bool = True,
                release_fields: dict[str, str] | None = None) -> None:
        dists = self.root / "dists" / self.suite
        shutil.rmtree(self.root / "pool", ignore_errors=True)
        shutil.rmtree(dists, ignore_errors=True)
        for comp, pkgs in {component: packages, **(extra_components or {})}.items():
            pool = self.root / "pool" / comp
            pool.mkdir(parents=True)
            for name, version in pkgs.items():
                self._deb(pool, name, version)
            folder = dists / comp / "binary-amd64"
            folder.mkdir(parents=True)
            listing = subprocess.run(["apt-ftparchive", "packages", f"pool/{comp}"],
                                     cwd=self.root, check=True, capture_output=True).stdout
            (folder / "Packages").write_bytes(listing)
            subprocess.run(["xz", "-k", "-f", str(folder / "Packages")], check=True)
            if by_hash:
                hashed = folder / "by-hash" / "SHA256"
                hashed.mkdir(parents=True)
                for name in ("Packages", "Packages.xz"):
                    data = (folder / name).read_bytes()
                    (hashed / hashlib.sha256(data).hexdigest()).write_bytes(data)
        options = ["-o", f"APT::FTPArchive::Release::Suite={self.suite}",
                   "-o", f"APT::FTPArchive::Release::Codename={self.suite}",
                   "-o", "APT::FTPArchive::Release::Label=Debian-Security"]
        if by_hash:
            options += ["-o", "APT::FTPArchive::Release::Acquire-By-Hash=yes"]
        for key, value in (release_fields or {}).items():
            options += ["-o", f"APT::FTPArchive::Release::{key}={value}"]
        release = subprocess.run(["apt-ftparchive", *options, "release", "."], cwd=dists,
                                 check=True, capture_output=True).stdout
        (dists / "Release").write_bytes(release)
        if inrelease:
            # Clear-signed in form only: the client strips signatures, never checks them.
            (dists / "InRelease").write_bytes(
                b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n" + release +
                b"-----BEGIN PGP SIGNATURE-----\n\niQIzBAEBCgAdFiEE\n-----END PGP "
                b"SIGNATURE-----\n")

    def _deb(self, pool: Path, name: str, version: str) -> None:
        build = self.root / "build" / f"{name}_{version}"
        (build / "DEBIAN").mkdir(parents=True, exist_ok=True)
        (build / "DEBIAN" / "control").write_text(
            f"Package: {name}\nVersion: {version}\nArchitecture: amd64\nSource: {name}-src\n"
            "Maintainer: Test <test@example.org>\nDescription: a test package\n more text\n")
        # A fixed date: the same package published again is the same bytes (its
        # Packages entry, hash included, must not change with the clock's second).
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(build),
                        str(pool / f"{name}_{version}_amd64.deb")], check=True,
                       capture_output=True, env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"})
        shutil.rmtree(build)


class Server:
    """Serves a folder; counts requests by path; can answer garbage or 404 on purpose."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hits: Counter[str] = Counter()
        self.garbage: set[str] = set()
        self.missing: set[str] = set()
        self.corrupt: set[str] = set()  # a file changed under the Release (mirror mid-update)
        self.not_modified: set[str] = set()  # 304 whatever was asked (a broken cache)
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.hits[path] += 1
        if any(path.endswith(g) for g in self.garbage):
            return web.Response(text="<html><body>Proxy error</body></html>",
                                content_type="text/html")
        if any(path.endswith(n) for n in self.not_modified):
            return web.Response(status=304)
        if any(m in path for m in self.missing):
            raise web.HTTPNotFound()
        target = (self.root / path.lstrip("/")).resolve()
        if not target.is_relative_to(self.root) or not target.is_file():
            raise web.HTTPNotFound()
        if any(path.endswith(c) for c in self.corrupt):
            return web.Response(body=target.read_bytes()[:-1] + b"X")
        return web.FileResponse(target)

    def count(self, suffix: str = "") -> int:
        return sum(n for p, n in self.hits.items() if p.endswith(suffix))


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Repo, Server]]:
    root = tmp_path / "repo"
    root.mkdir()
    server = Server(root.resolve())
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.url = f"http://127.0.0.1:{port}"
    try:
        yield Repo(root), server
    finally:
        await runner.cleanup()


@pytest.fixture
async def watch(tmp_path: Path) -> AsyncIterator[IndexWatch]:
    async with IndexWatch(tmp_path / "work", timeout_s=2.0) as it:
        yield it


def suite(server: Server, name: str = "bookworm-security") -> AptSuite:
    return AptSuite(server.url, name, ("main",), trusted=True)


WANTED = {"openssl", "libssl3"}


async def test_a_new_version_is_seen_and_an_unchanged_index_costs_one_request(
        served: tuple[Repo, Server], watch: IndexWatch) -> None:
    repo, server = served
    repo.publish({"openssl": "3.0.15-1~deb12u1", "libssl3": "3.0.15-1~deb12u1",
                  "unrelated": "1.0"})
    first = await watch.poll(suite(server), WANTED, ["amd64"])
    assert isinstance(first, IndexSnapshot)
    assert first.suite == "bookworm-security" and first.security
    assert first.entries["openssl"] == (IndexEntry(
        "openssl", "3.0.15-1~deb12u1", "amd64", "openssl-src",
        first.entries["openssl"][0].sha256),)
    assert "unrelated" not in first.entries  # only what our layers installed is kept
    # The Packages file came by hash (xz, the smallest form listed).
    assert [p for p in server.hits if "by-hash" in p] and server.count("/InRelease") == 1
    assert first.digest.startswith("sha256:") and first.date

    server.hits.clear()
    again = await watch.poll(suite(server), WANTED, ["amd64"])
    assert isinstance(again, IndexUnchanged) and again.snapshot == first
    assert server.count() == 1  # one conditional request, answered 304

    await asyncio.sleep(0.01)  # a new mtime for the server's validators
    repo.publish({"openssl": "3.0.16-1~deb12u1", "libssl3": "3.0.16-1~deb12u1"})
    server.hits.clear()
    fixed = await watch.poll(suite(server), WANTED, ["amd64"])
    assert isinstance(fixed, IndexSnapshot)
    assert [e.version for e in fixed.entries["libssl3"]] == ["3.0.16-1~deb12u1"]
    assert fixed.digest != first.digest
    assert server.count() == 2  # the Release, then the Packages file


async def test_a_release_that_changed_elsewhere_fetches_no_packages_file(
        served: tuple[Repo, Server], watch: IndexWatch) -> None:
    repo, server = served
    repo.publish({"openssl": "1"}, extra_components={"contrib": {"other": "1"}})
    assert isinstance(await watch.poll(suite(server), WANTED, ["amd64"]), IndexSnapshot)
    await asyncio.sleep(0.01)
    repo.publish({"openssl": "1"}, extra_components={"contrib": {"other": "2"}})
    server.hits.clear()
    result = await watch.poll(suite(server), WANTED, ["amd64"])
    assert isinstance(result, IndexUnchanged)
    assert list(server.hits) == ["/dists/bookworm-security/InRelease"]
    # More names wanted than were kept: the Packages file is read again.
    server.hits.clear()
    more = await watch.poll(suite(server), {*WANTED, "curl"}, ["amd64"])
    assert isinstance(more, IndexSnapshot) and server.count() == 2


async def test_without_inrelease_the_release_is_read_and_remembered(
        served: tuple[Repo, Server], watch: IndexWatch) -> None:
    repo, server = served
    repo.publish({"openssl": "1"}, inrelease=False, by_hash=False)
    assert isinstance(await watch.poll(suite(server), WANTED, ["amd64"]), IndexSnapshot)
    assert server.hits["/dists/bookworm-security/InRelease"] == 1
    server.hits.clear()
    assert isinstance(await watch.poll(suite(server), WANTED, ["amd64"]), IndexUnchanged)
    assert list(server.hits.items()) == [("/dists/bookworm-security/Release", 1)]


async def test_a_by_hash_404_falls_back_to_the_path(
        served: tuple[Repo, Server], watch: IndexWatch) -> None:
    repo, server = served
    repo.publish({"openssl": "3.0.16-1~deb12u1"})
    server.missing.add("/by-hash/")
    result = await watch.poll(suite(server), WANTED, ["amd64"])
    assert isinstance(result, IndexSnapshot) and result.entries["openssl"][0].version == \
        "3.0.16-1~deb12u1"
    assert server.count("/main/binary-amd64/Packages.xz") == 1


@pytest.mark.parametrize("where", ["/InRelease", "Packages.xz"])
async def test_garbage_is_a_failure_of_that_index_only(
        served: tuple[Repo, Server], watch: IndexWatch, where: str) -> None:
    repo, server = served
    repo.publish({"openssl": "1"}, by_hash=False)
    server.garbage.add(where)
    result = await watch.poll(suite(server), WANTED, ["amd64"])
    assert isinstance(result, IndexFailure)
    assert ("garbage" in result.message) if where == "/InRelease" else \
        "the Release says" in result.message
    assert watch.states.get(suite(server).id) is None  # nothing half-learnt is kept


async def test_a_file_changed_under_its_release_is_refused(
        served: tuple[Repo, Server], watch: IndexWatch) -> None:
    repo, server = served
    repo.publish({"openssl": "1"}, by_hash=False)
    server.corrupt.add("Packages.xz")
    result = await watch.poll(suite(server), WANTED, ["amd64"])
    assert isinstance(result, IndexFailure) and "mid-update" in result.message


async def test_an_unreachable_or_hanging_index_never_holds_up_the_others(
        served: tuple[Repo, Server], tmp_path: Path) -> None:
    repo, server = served
    repo.publish({"openssl": "1"})
    hanging = socket.socket()
    hanging.bind(("127.0.0.1", 0))
    hanging.listen()  # accepts connections, never answers
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, not listening: refused
    try:
        async with IndexWatch(tmp_path / "w", timeout_s=0.5) as watch:
            started = time.monotonic()
            results = await asyncio.gather(
                watch.poll(AptSuite(f"http://127.0.0.1:{hanging.getsockname()[1]}",
                                    "bookworm", ("main",)), WANTED, ["amd64"]),
                watch.poll(AptSuite(f"http://127.0.0.1:{closed.getsockname()[1]}",
                                    "bookworm", ("main",)), WANTED, ["amd64"]),
                watch.poll(suite(server), WANTED, ["amd64"]))
            took = time.monotonic() - started
    finally:
        hanging.close()
        closed.close()
    assert isinstance(results[0], IndexFailure) and results[0].message == "timed out"
    assert isinstance(results[1], IndexFailure) and "Connect" in results[1].message
    assert isinstance(results[2], IndexSnapshot)
    assert took < 3


async def test_http_errors_say_when_to_retry(served: tuple[Repo, Server],
                                             watch: IndexWatch) -> None:
    _, server = served
    result = await watch.poll(suite(server, "nosuch"), WANTED, ["amd64"])
    assert isinstance(result, IndexFailure) and "HTTP 404" in result.message
    assert "/dists/nosuch/Release" in result.message  # InRelease first, then Release


async def test_state_survives_a_restart_as_json(served: tuple[Repo, Server],
                                                watch: IndexWatch, tmp_path: Path) -> None:
    repo, server = served
    repo.publish({"openssl": "1"})
    first = await watch.poll(suite(server), WANTED, ["amd64"])
    saved = watch.states[suite(server).id].to_json()
    server.hits.clear()
    async with IndexWatch(tmp_path / "w2", states={
            suite(server).id: IndexState.from_json(saved)}) as again:
        result = await again.poll(suite(server), WANTED, ["amd64"])
    assert isinstance(result, IndexUnchanged) and result.snapshot == first
    assert server.count() == 1


BACKPORTS = {"NotAutomatic": "yes", "ButAutomaticUpgrades": "yes"}


async def test_a_backports_release_says_apt_does_not_install_from_it_by_itself(
        served: tuple[Repo, Server], watch: IndexWatch) -> None:
    repo, server = served
    repo.suite = "bookworm-backports"
    repo.publish({"openssl": "3.4.0-1~bpo12+1"}, release_fields=BACKPORTS)
    first = await watch.poll(suite(server, "bookworm-backports"), WANTED, ["amd64"])
    assert isinstance(first, IndexSnapshot)
    assert (first.not_automatic, first.but_automatic_upgrades, first.priority) == \
        (True, True, 100)
    # The suite turns into an ordinary one, its packages unchanged: a changed snapshot.
    await asyncio.sleep(0.01)
    repo.publish({"openssl": "3.4.0-1~bpo12+1"})
    server.hits.clear()
    plain = await watch.poll(suite(server, "bookworm-backports"), WANTED, ["amd64"])
    assert isinstance(plain, IndexSnapshot)
    assert (plain.not_automatic, plain.but_automatic_upgrades, plain.priority) == \
        (False, False, 500)
    assert plain.entries == first.entries
    assert server.count("Packages.xz") == 0  # only the Release was read again


async def test_a_state_kept_before_the_release_flags_loads_and_reads_them_again(
        served: tuple[Repo, Server], watch: IndexWatch, tmp_path: Path) -> None:
    # packages.db holds states written by the version before: no not_automatic or
    # but_automatic_upgrades. They load (as an ordinary suite), and the next poll reads
    # the Release again even though the validators say it is unchanged.
    repo, server = served
    repo.suite = "bookworm-backports"
    repo.publish({"openssl": "3.4.0-1~bpo12+1"}, release_fields=BACKPORTS)
    source = suite(server, "bookworm-backports")
    first = await watch.poll(source, WANTED, ["amd64"])
    assert isinstance(first, IndexSnapshot)
    data = json.loads(watch.states[source.id].to_json())
    del data["not_automatic"], data["but_automatic_upgrades"]
    old = IndexState.from_json(json.dumps(data))
    loaded = old.snapshot()
    assert loaded is not None and loaded.entries == first.entries
    assert (loaded.not_automatic, loaded.but_automatic_upgrades, loaded.priority) == \
        (False, False, 500)
    server.hits.clear()
    async with IndexWatch(tmp_path / "w2", states={source.id: old}) as again:
        result = await again.poll(source, WANTED, ["amd64"])
        assert isinstance(result, IndexSnapshot)  # the flags changed what it means
        assert (result.not_automatic, result.but_automatic_upgrades) == (True, True)
        assert server.count("/InRelease") == 1 and server.count("Packages.xz") == 0
        server.hits.clear()
        # From then on, conditional again.
        assert isinstance(await again.poll(source, WANTED, ["amd64"]), IndexUnchanged)
        assert server.count() == 1
    # A state written now keeps the flags across a restart.
    kept = IndexState.from_json(watch.states[source.id].to_json())
    assert kept.validators and kept.not_automatic and kept.but_automatic_upgrades


async def test_a_poller_backs_off_and_reports_then_recovers(
        served: tuple[Repo, Server], watch: IndexWatch) -> None:
    repo, server = served
    changes: list[IndexSnapshot] = []
    errors: list[tuple[str, float]] = []

    async def on_change(snapshot: IndexSnapshot) -> None:
        changes.append(snapshot)

    poller = IndexPoller(watch, suite(server), lambda: (WANTED, ["amd64"]), 3600.0, on_change,
                         on_error=lambda f, delay: errors.append((f.message, delay)))
    assert await poller.check() == 5.0  # nothing published yet: 404
    assert await poller.check() == 10.0
    assert poller.status()["error"] and poller.status()["failures"] == 2
    repo.publish({"openssl": "1"})
    delay = await poller.check()
    assert 3240 <= delay <= 3960 and poller.status()["error"] is None
    assert len(changes) == 1 and len(errors) == 2
    assert await poller.check() > 3000 and len(changes) == 1  # unchanged: no change event


# --- Alpine --------------------------------------------------------------------------------


def apkindex(packages: dict[str, str]) -> bytes:
    """APKINDEX.tar.gz as apk-tools writes it: a signature tar segment, then the index's
    (two gzip streams, each tar without its end blocks)."""
    def segment(files: dict[str, bytes]) -> bytes:
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, body in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
        data = raw.getvalue()
        return gzip.compress(data.rstrip(b"\0") + b"\0" * (-len(data.rstrip(b"\0")) % 512),
                             mtime=0)

    def origin(name: str) -> str:
        return "openssl" if name.startswith("libssl") else name

    index = "".join(f"C:Q1abc=\nP:{name}\nV:{version}\nA:x86_64\no:{origin(name)}\n"
                    f"S:100\nI:200\nT:test\n\n" for name, version in packages.items())
    return segment({".SIGN.RSA.alpine-devel@lists.alpinelinux.org-6165ee59.rsa.pub": b"sig"}) \
        + segment({"DESCRIPTION": b"v3.20.3", "APKINDEX": index.encode()})


async def test_an_apkindex_is_polled_conditionally(served: tuple[Repo, Server],
                                                   watch: IndexWatch) -> None:
    repo, server = served
    folder = repo.root / "v3.20" / "main" / "x86_64"
    folder.mkdir(parents=True)
    (folder / "APKINDEX.tar.gz").write_bytes(apkindex({"openssl": "3.3.1-r0",
                                                       "libssl3": "3.3.1-r0", "musl": "1"}))
    source = ApkRepository(f"{server.url}/v3.20/main", architectures=("x86_64",))
    first = await watch.poll(source, WANTED, [])
    assert isinstance(first, IndexSnapshot) and first.suite == "v3.20/main"
    assert first.entries["libssl3"] == (IndexEntry("libssl3", "3.3.1-r0", "x86_64",
                                                   "openssl"),)
    assert set(first.entries) == WANTED
    server.hits.clear()
    assert isinstance(await watch.poll(source, WANTED, []), IndexUnchanged)
    assert server.count() == 1
    await asyncio.sleep(0.01)
    (folder / "APKINDEX.tar.gz").write_bytes(apkindex({"openssl": "3.3.2-r0",
                                                       "libssl3": "3.3.2-r0"}))
    fixed = await watch.poll(source, WANTED, [])
    assert isinstance(fixed, IndexSnapshot) and fixed.entries["openssl"][0].version == \
        "3.3.2-r0"


async def test_an_apkindex_that_is_not_one(served: tuple[Repo, Server],
                                           watch: IndexWatch) -> None:
    repo, server = served
    folder = repo.root / "alpine" / "x86_64"
    folder.mkdir(parents=True)
    (folder / "APKINDEX.tar.gz").write_bytes(b"<html>captive portal</html>")
    result = await watch.poll(ApkRepository(f"{server.url}/alpine", None, ("x86_64",)),
                              WANTED, [])
    assert isinstance(result, IndexFailure) and "garbage" in result.message




async def test_a_mirrors_credentials_never_reach_the_suite_or_status(
        served: tuple[Repo, Server], watch: IndexWatch) -> None:
    # A private mirror at the root of its host: https://user:token@apk.corp/main. The
    # suite ("v3.20/main" on Alpine's CDN: the URL's last two segments) goes into the
    # cause line, events and the provenance's resolvedDependencies, where a
    # "user:token@host" without a scheme is not recognised as a credential.
    repo, server = served
    folder = repo.root / "main" / "x86_64"
    folder.mkdir(parents=True)
    (folder / "APKINDEX.tar.gz").write_bytes(apkindex({"openssl": "3.3.1-r0"}))
    host = server.url.removeprefix("http://")
    source = ApkRepository(f"http://ci:s3cret@{host}/main", architectures=("x86_64",))
    found = await watch.poll(source, WANTED, [])
    assert isinstance(found, IndexSnapshot) and "s3cret" not in found.suite
    assert found.suite == "main"
    # GET /v1/status shows each index's poller: its source and its last error.
    failing = AptSuite(f"http://ci:s3cret@{host}", "nosuch", ("main",))
    poller = IndexPoller(watch, failing, lambda: (WANTED, ["amd64"]), 3600.0,
                         lambda _: asyncio.sleep(0))
    await poller.check()
    status = poller.status()
    assert status["error"] and "HTTP 404" in status["error"]
    assert "s3cret" not in repr(status)


async def test_a_304_to_a_question_that_was_not_conditional_is_a_failure(
        served: tuple[Repo, Server], watch: IndexWatch) -> None:
    # A broken cache in front of the mirror answers 304 to anything. When a layer
    # starts installing another package, the index is asked again without validators
    # to read it; taking that 304 as "unchanged" recorded the new name as read, and
    # every later (conditional, rightly 304) poll kept it unwatched for good.
    repo, server = served
    folder = repo.root / "v3.20" / "main" / "x86_64"
    folder.mkdir(parents=True)
    (folder / "APKINDEX.tar.gz").write_bytes(apkindex({"openssl": "3.3.1-r0",
                                                       "libssl3": "3.3.1-r0"}))
    source = ApkRepository(f"{server.url}/v3.20/main", architectures=("x86_64",))
    assert isinstance(await watch.poll(source, {"openssl"}, []), IndexSnapshot)
    server.not_modified.add("APKINDEX.tar.gz")
    bogus = await watch.poll(source, WANTED, [])
    assert isinstance(bogus, IndexFailure) and "304" in bogus.message
    server.not_modified.clear()
    again = await watch.poll(source, WANTED, [])
    assert isinstance(again, IndexSnapshot) and set(again.entries) == WANTED
    # The same for a Debian suite never read: nothing was learnt, so it is no success.
    server.not_modified.add("InRelease")
    first = await watch.poll(suite(server), WANTED, ["amd64"])
    assert isinstance(first, IndexFailure) and "304" in first.message


def test_a_huge_apkindex_is_read_as_a_stream(tmp_path: Path) -> None:
    # An APKINDEX.tar.gz may be 256 MiB and unpack to 2 GiB: it was read whole into
    # memory, then decoded and split (several times that): a mirror could take the
    # daemon down. Only the packages asked about are kept, as for Packages files.
    from orchestrator.registry.indexwatch import _read_apkindex

    stanza = "C:Q1abc=\nP:filler{}\nV:1.0-r0\nA:x86_64\nS:100\nI:200\nT:{}\n\n"
    body = "".join(stanza.format(n, "x" * 600) for n in range(20_000))
    body += "P:openssl\nV:3.3.2-r0\nA:x86_64\n\n"
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=1) as tar:
        data = body.encode()
        info = tarfile.TarInfo("APKINDEX")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    path = tmp_path / "APKINDEX.tar.gz"
    path.write_bytes(raw.getvalue())
    assert len(data) > 12_000_000
    import tracemalloc

    tracemalloc.start()
    try:
        rows = _read_apkindex(path, {"openssl"})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rows == [["openssl", "3.3.2-r0", "x86_64", None, None]]
    assert peak < 2_000_000, peak


def test_an_index_of_one_endless_line_is_garbage(tmp_path: Path) -> None:
    # Read line by line, a file without line breaks was one string as big as the file.
    from orchestrator.core.pkgindex import IndexFormatError
    from orchestrator.registry.indexwatch import MAX_LINE_BYTES, _read_packages

    path = tmp_path / "Packages.gz"
    path.write_bytes(gzip.compress(b"Package: x" + b"y" * (MAX_LINE_BYTES + 10), 1))
    with pytest.raises(IndexFormatError, match="longer than"):
        _read_packages(path, {"openssl"})


async def test_a_repository_that_stops_signing_inline_is_read_from_its_release(
        served: tuple[Repo, Server], watch: IndexWatch) -> None:
    # The client remembers which of InRelease/Release answered and asks only that one.
    # An internal repository that drops InRelease (republished unsigned, or signed
    # detached) then answered 404 on every poll, forever: the state is kept across
    # restarts too. A 404 from the remembered one asks the other.
    repo, server = served
    repo.publish({"openssl": "1"})
    assert isinstance(await watch.poll(suite(server), WANTED, ["amd64"]), IndexSnapshot)
    await asyncio.sleep(0.01)
    repo.publish({"openssl": "2"}, inrelease=False)
    found = await watch.poll(suite(server), WANTED, ["amd64"])
    assert isinstance(found, IndexSnapshot) and found.entries["openssl"][0].version == "2"
    assert found.url.endswith("/dists/bookworm-security/Release")
