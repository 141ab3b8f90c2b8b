"""What attestation adds to an app-only rebuild of a Debian chain: the build alone, the
SBOM read of every layer (as before package records), and the incremental read that
starts from the parent's record, side by side in one run.

The chain stands on the test bed's Debian seed (mmdebstrap bookworm, about 60 MB
compressed) and mirrors examples/debian's shape without compiling CPython:

    upstream:debian -> os (a user; dpkg -i of a small package)
                    -> runtime (a large layer: a copy of /usr, ~150 MB, with Python
                                distributions, standing in for pyenv's CPython)
                    -> app (one small file)

Each timed run edits the app's file and runs `orchestrator build`: only the app
rebuilds. "full" empties the record cache first, so the SBOM reads every layer of
the image, which is what every build did before; "incremental" keeps it. Median of
REPEAT runs each, interleaved so drift hits all alike.

``--image REF`` measures the SBOM step alone on an image already in a registry
(such as the examples/debian chain the integration tests build, CPython
included), following its parents through their base.digest labels: the read of
every layer as before package records, against the read of its own layers from
its parent's record.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import orchestrator, testbed, write_config

REPEAT = int(os.environ.get("BENCH_REPEAT", "5"))
VARIANTS = ("off", "full", "incremental")

OS = """ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY hello-bench.deb /tmp/
RUN dpkg -i /tmp/hello-bench.deb && rm /tmp/hello-bench.deb \\
 && echo 'app:x:1000:1000::/home/app:/bin/sh' >> /etc/passwd \\
 && mkdir -p /home/app && chown 1000 /home/app
USER 1000
"""
RUNTIME = """ARG BASE_IMAGE
FROM ${BASE_IMAGE}
USER root
RUN mkdir -p /opt/runtime && cp -a /usr /opt/runtime/ \\
 && for d in flask-3.1.0 jinja2-3.1.6 werkzeug-3.1.3 click-8.1.8 markupsafe-3.0.2; do \\
      name=${d%-*}; v=${d##*-}; \\
      m=/opt/runtime/lib/python3.13/site-packages/$name-$v.dist-info; mkdir -p $m; \\
      printf 'Metadata-Version: 2.1\\nName: %s\\nVersion: %s\\n\\n' $name $v > $m/METADATA; \\
    done
USER 1000
"""
APP = """ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY app.txt /home/app/app.txt
USER 1000
"""


def catalog(root: Path, tb: dict[str, str], attest: bool) -> None:
    write_config(root, tb)
    text = (root / "config.toml").read_text()
    text += (f'\n[upstream.debian]\nimage = "{tb["ORCH_TEST_DEBIAN_IMAGE"]}"\n'
             'tag = "bookworm"\ntls_verify = false\n'
             f"\n[provenance]\nenabled = {'true' if attest else 'false'}\n")
    (root / "config.toml").write_text(text)
    for name, parent, dockerfile in (("os", "upstream:debian", OS),
                                     ("runtime", "os", RUNTIME), ("app", "runtime", APP)):
        folder = root / "layers" / name
        folder.mkdir(parents=True)
        (folder / "layer.toml").write_text(f'from = "{parent}"\n')
        (folder / "Dockerfile").write_text(dockerfile)
    (root / "layers" / "app" / "app.txt").write_text("0\n")
    package = root / "deb"
    (package / "DEBIAN").mkdir(parents=True)
    (package / "DEBIAN" / "control").write_text(
        "Package: hello-bench\nVersion: 1.0-1\nArchitecture: all\n"
        "Maintainer: Bench <bench@example.org>\nDescription: a package the os layer installs\n")
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(package),
                    str(root / "layers" / "os" / "hello-bench.deb")], check=True,
                   capture_output=True)


def build(root: Path, expect: set[str]) -> float:
    started = time.perf_counter()
    proc = orchestrator(root, "build", "--json")
    took = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = {e["layer"] for e in json.loads(proc.stdout)["layers"] if e["outcome"] == "built"}
    assert built == expect, (built, expect)
    return took


async def image_mode(reference: str) -> None:
    from datetime import UTC, datetime

    from orchestrator.build.attest import Ancestor, Attestor, AttestSettings, _opened
    from orchestrator.build.packagestore import PackageStore
    from orchestrator.core.imageref import ImageRef, parse_reference, parse_repository
    from orchestrator.core.sbom import (
        SBOM_PATTERNS,
        SBOM_PRESENCE_PATTERNS,
        build_sbom,
        sbom_document,
    )
    from orchestrator.registry.client import Manifest, RegistryClient
    from orchestrator.registry.imagefs import contents, select_files

    ref = parse_reference(reference)
    async with RegistryClient(insecure=frozenset({ref.registry})) as client:
        # The chain, oldest first: (owner, repository, manifest).
        chain: list[tuple[str, ImageRef, Manifest]] = []
        repo = parse_repository(f"{ref.registry}/{ref.repository}")
        at = ref.digest or ref.tag or "latest"
        while True:
            manifest = await client.get_manifest(repo, at)
            assert manifest is not None, f"{repo.name}@{at} not found"
            config = json.loads(await client.get_blob(repo, manifest.json()["config"]["digest"]))
            labels = (config.get("config") or {}).get("Labels") or {}
            chain.insert(0, (repo.name.rsplit("/", 1)[1], repo, manifest))
            parent = labels.get("org.opencontainers.image.base.digest")
            name = labels.get("org.opencontainers.image.base.name")
            if not parent or not name or len(chain) > 10:
                break
            named = parse_reference(name)
            repo, at = parse_repository(f"{named.registry}/{named.repository}"), parent
        owner0, repo0, manifest0 = chain[0]
        chain[0] = (f"upstream:{owner0}", repo0, manifest0)
        *below, (owner, repo, subject) = chain
        layers = [layer["digest"] for layer in subject.json()["layers"]]
        sizes = [layer["size"] >> 20 for layer in subject.json()["layers"]]
        print(f"{reference}: {len(layers)} layers ({'+'.join(map(str, sizes))} MiB), "
              f"chain {' -> '.join(o for o, _, _ in chain)}")

        with tempfile.TemporaryDirectory(prefix="bench-attest-image-") as tmp:
            work = Path(tmp)

            async def before() -> None:  # what every build did: every layer, every file
                folder = work / "all"
                folder.mkdir()
                paths = []
                for index, layer in enumerate(layers):
                    paths.append(folder / f"{index:03d}")
                    await client.download_blob(repo, layer, paths[-1])

                def read() -> bytes:
                    with _opened(paths) as blobs:
                        files = select_files(blobs, SBOM_PATTERNS,
                                             presence=SBOM_PRESENCE_PATTERNS)
                    return build_sbom(contents(files), image_name=repo.name,
                                      image_digest=subject.digest, tool_version="bench",
                                      timestamp=datetime.now(UTC))

                await asyncio.to_thread(read)
                shutil.rmtree(folder)

            store = PackageStore(work / "packages.db")
            attestor = Attestor(client, AttestSettings(), store)
            lineage: list[Ancestor] = []
            for name, r, manifest in below:  # the ancestors' records, as earlier builds made
                await attestor.record(r, manifest, name, lineage, work)
                lineage.append(Ancestor(name, r.name, manifest.digest))

            async def after() -> None:
                store.forget([subject.digest])  # as a new image: its record is not kept
                record = await attestor.record(repo, subject, owner, lineage, work)
                await asyncio.to_thread(lambda: sbom_document(
                    record.sbom_packages(), record.release(), image_name=repo.name,
                    image_digest=subject.digest, tool_version="bench",
                    timestamp=datetime.now(UTC)))

            times: dict[str, list[float]] = {"before": [], "after": []}
            for _ in range(REPEAT):
                for label, step in (("before", before), ("after", after)):
                    started = time.perf_counter()
                    await step()
                    times[label].append(time.perf_counter() - started)
    for label, text in (("before", "every layer read (as before)"),
                        ("after", "own layers read from the parent's record")):
        print(f"  SBOM step, {text:42} {statistics.median(times[label]):6.2f} s   runs: "
              + " ".join(f"{t:.2f}" for t in times[label]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", help="measure the SBOM step on this image's chain")
    args = parser.parse_args()
    if args.image:
        asyncio.run(image_mode(args.image))
        return
    tb = testbed()
    if "ORCH_TEST_DEBIAN_IMAGE" not in tb:
        sys.exit("needs the test bed's Debian seed image")
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="bench-attest-inc-") as tmp:
        roots = {}
        for variant in VARIANTS:
            root = Path(tmp) / variant
            root.mkdir()
            catalog(root, tb, attest=variant != "off")
            build(root, {"os", "runtime", "app"})  # cold, not timed
            roots[variant] = root
        for run in range(1, REPEAT + 1):
            for variant in VARIANTS:
                root = roots[variant]
                (root / "layers" / "app" / "app.txt").write_text(f"{run}\n")
                if variant == "full":
                    for path in (root / "state").glob("packages.db*"):
                        path.unlink()
                times[variant].append(build(root, {"app"}))
    floor = statistics.median(times["off"])
    print(f"app-only rebuild of a Debian chain (debian -> os -> runtime ~150 MB -> app), "
          f"median of {REPEAT}:")
    for variant, label in (("off", "build alone (no attestation)"),
                           ("full", "+ provenance + SBOM, every layer read"),
                           ("incremental", "+ provenance + SBOM, own layers read")):
        value = statistics.median(times[variant])
        extra = "" if variant == "off" else f"  (+{value - floor:5.2f} s)"
        print(f"  {label:42} {value:6.2f} s{extra}   runs: "
              + " ".join(f"{t:.2f}" for t in times[variant]))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
