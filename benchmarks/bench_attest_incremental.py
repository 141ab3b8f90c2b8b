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
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import orchestrator, testbed, write_config

REPEAT = 5
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


def main() -> None:
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
