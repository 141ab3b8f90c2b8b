"""From a fixed package published in an index to the pushed, attested image, on the
real daemon (median of ROUNDS), against the floor: that layer's own build and push.

A loopback Debian archive (``dpkg-deb``, ``apt-ftparchive``, a ``bookworm-security``
suite served on 127.0.0.1) and an air-gapped copy of the test bed's Debian seed
(its sources.list emptied, so nothing reaches the real archive):

    upstream:debian -> os (adds the archive, apt-get install hello-bench) -> app (a file)
                    -> other (a file; an unrelated branch)

The daemon runs with ``[packages] poll = "1s"`` and ``window = "0s"``. Each round
publishes the next version of hello-bench and waits for os's ``build_finished``
(after its attestations and tags); the time from the publish is what a user waits.
The floor is that build's own ``run`` step (``buildah bud`` with the push). What is
left between them is the poll (0-1.1 s), the decision, the SBOM read of os's own
layer and the tags. Builds per fix: layer builds between two publishes (os and its
descendant; the unrelated branch never).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.common import testbed

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "10"))
SUITE = "bookworm-security"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def publish(root: Path, version: str) -> None:
    """hello-bench VERSION into the pool, then Packages and Release, each by rename."""
    pool = root / "pool" / "main"
    pool.mkdir(parents=True, exist_ok=True)
    build = root / "build"
    (build / "DEBIAN").mkdir(parents=True, exist_ok=True)
    (build / "DEBIAN" / "control").write_text(
        f"Package: hello-bench\nVersion: {version}\nArchitecture: amd64\n"
        "Maintainer: Bench <bench@example.org>\nDescription: a benchmark package\n")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(build),
                    str(pool / f"hello-bench_{version}_amd64.deb")], check=True,
                   capture_output=True)
    shutil.rmtree(build)
    dists = root / "dists" / SUITE
    folder = dists / "main" / "binary-amd64"
    folder.mkdir(parents=True, exist_ok=True)
    listing = subprocess.run(["apt-ftparchive", "packages", "pool/main"], cwd=root, check=True,
                             capture_output=True).stdout
    (folder / "Packages.new").write_bytes(listing)
    os.replace(folder / "Packages.new", folder / "Packages")
    release = subprocess.run(["apt-ftparchive", "-o", f"APT::FTPArchive::Release::Suite={SUITE}",
                              "release", "."], cwd=dists, check=True,
                             capture_output=True).stdout
    (dists / "Release.new").write_bytes(release)
    os.replace(dists / "Release.new", dists / "Release")


def airgapped_base(tb: dict[str, str], namespace: str, work: Path) -> str:
    empty = work / "sources.list"
    empty.write_text("")
    target = f"{tb['ORCH_TEST_REGISTRY']}/{namespace}/debian"
    ctr = subprocess.run(["buildah", "from", "--tls-verify=false",
                          f"{tb['ORCH_TEST_DEBIAN_IMAGE']}:bookworm"], check=True,
                         capture_output=True, text=True).stdout.strip()
    try:
        subprocess.run(["buildah", "copy", ctr, str(empty), "/etc/apt/sources.list"],
                       check=True, capture_output=True)
        subprocess.run(["buildah", "commit", "--quiet", "--tls-verify=false", ctr,
                        f"docker://{target}:bookworm"], check=True, capture_output=True)
    finally:
        subprocess.run(["buildah", "rm", ctr], check=False, capture_output=True)
    return target


def catalog(root: Path, tb: dict[str, str], namespace: str, base: str, url: str) -> None:
    (root / "config.toml").write_text(f"""
[catalog]
layers = "layers"
[registry]
url = "{tb['ORCH_TEST_REGISTRY']}/{namespace}"
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
[packages]
poll = "1s"
window = "0s"
""")
    layers = {
        "os": ("upstream:debian",
               f"RUN echo 'deb [trusted=yes] {url} {SUITE} main' "
               "> /etc/apt/sources.list.d/internal.list \\\n"
               " && apt-get update && apt-get install -y hello-bench \\\n"
               " && rm -rf /var/lib/apt/lists/*\n"),
        "app": ("os", "COPY app.txt /app.txt\n"),
        "other": ("upstream:debian", "COPY app.txt /other.txt\n"),
    }
    for name, (parent, body) in layers.items():
        folder = root / "layers" / name
        folder.mkdir(parents=True)
        (folder / "layer.toml").write_text(f'from = "{parent}"\n')
        (folder / "Dockerfile").write_text(
            f"ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}}\n{body}USER 1000\n")
        (folder / "app.txt").write_text(name + "\n")


def events(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line being written
    return out


def at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def wait_for(log: Path, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in events(log):
            if predicate(event):
                return event
        time.sleep(0.05)
    sys.exit(f"timed out waiting for {what}; see {log}")


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress
    tb = testbed()
    if "ORCH_TEST_DEBIAN_IMAGE" not in tb:
        sys.exit("the test bed has no Debian seed image")
    work = Path(tempfile.mkdtemp(prefix="bench-pkgfix-"))
    archive = work / "archive"
    archive.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(archive)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    namespace = f"benchpkg{os.getpid()}"
    root = work / "project"
    root.mkdir()
    log = work / "daemon.log"
    daemon = None
    try:
        publish(archive, "1.0-1")
        catalog(root, tb, namespace, airgapped_base(tb, namespace, work), url)
        with log.open("w") as out:
            daemon = subprocess.Popen([sys.executable, "-m", "orchestrator", "-c",
                                       str(root / "config.toml"), "run"], cwd=root,
                                      stdout=out, stderr=subprocess.STDOUT)
        # Ready once the first index poll is done: after the startup run, whose package
        # records name the index.
        wait_for(log, lambda e: e["event"] == "package_index_changed", 600,
                 "the first index poll")
        totals, floors, seen_after, builds_per_fix = [], [], [], []
        for n in range(1, ROUNDS + 1):
            version = f"1.{n}-1"
            seen = len(events(log))
            published = time.time()
            publish(archive, version)
            done = wait_for(log, lambda e, t=published: e["event"] == "run_finished" and
                            at(e) > t and bool(e["counts"].get("built")),
                            600, f"the run for {version}")
            built = [e for e in events(log)[seen:] if e["event"] == "build_finished"
                     and e.get("outcome") == "built"]
            os_build = next(e for e in built if e["layer"] == "os")
            changed = next(e for e in events(log)[seen:]
                           if e["event"] == "package_index_changed")
            seen_after.append(at(changed) - published)
            assert "hello-bench" in (os_build.get("trigger") or ""), os_build
            totals.append(at(os_build) - published)
            floors.append(float(os_build["steps"].get("run", 0.0)) +
                          float(os_build["steps"].get("push", 0.0)))
            builds_per_fix.append(len(built))
            print(f"  {version}: {totals[-1]:.2f}s to the attested image (index seen after "
                  f"{seen_after[-1]:.2f}s), build+push {floors[-1]:.2f}s, {len(built)} builds "
                  f"({', '.join(e['layer'] for e in built)}); run ended +"
                  f"{at(done) - published:.2f}s")
        total, floor = statistics.median(totals), statistics.median(floors)
        print(f"publish -> pushed, attested image: median {total:.2f}s over {ROUNDS} fixes "
              f"(min {min(totals):.2f}, max {max(totals):.2f})")
        print(f"floor (the layer's build + push): median {floor:.2f}s; overhead "
              f"{total - floor:.2f}s, of which waiting for the poll "
              f"{statistics.median(seen_after):.2f}s (median; 0-1.1 s); the rest: the "
              "decision, the SBOM of the layer's own blob, the tags")
        print(f"builds per fix: {statistics.mean(builds_per_fix):.2f} "
              "(the layer and its descendant; the unrelated branch 0)")
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(120)
        server.shutdown()
        server.server_close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
