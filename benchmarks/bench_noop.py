"""No-op check: `orchestrator build` on an up-to-date 50-layer hierarchy vs. a
`make -j2` that calls the builder for every layer and relies on its cache.

Both run side by side in one process, on the same layers, after both have
built once (the orchestrator's images are in the registry, buildah's step
cache is warm for make). Goals: orchestrator <= 0.3 s and <= 0.15 x make.
Printed beside them, the floors: a bare `python -c pass` (interpreter start)
and the registry round trips the no-op makes (one HEAD per key tag and one for
the upstream), sent back to back on one keep-alive connection.
"""

from __future__ import annotations

import http.client
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import median, orchestrator, testbed, timed, write_config, write_layer

LAYERS = 50
REPEAT = 5


def hierarchy(root: Path) -> dict[str, str]:
    """A root and a binary-ish tree below it: every layer copies a file and runs a step."""
    parents: dict[str, str] = {"l00": "upstream:seed"}
    for i in range(1, LAYERS):
        parents[f"l{i:02d}"] = f"l{(i - 1) // 2:02d}"
    for name, parent in parents.items():
        write_layer(root, name, parent, f"COPY data.txt /tmp/{name}.txt\nRUN cat /tmp/{name}.txt\n")
        (root / "layers" / name / "data.txt").write_text(f"{name}\n")
    return parents


def makefile(root: Path, parents: dict[str, str], seed: str) -> None:
    lines = [".PHONY: all " + " ".join(parents), "all: " + " ".join(parents)]
    for name, parent in parents.items():
        base = seed if parent.startswith("upstream:") else f"localhost/make/{parent}:latest"
        dep = "" if parent.startswith("upstream:") else parent
        lines += [f"{name}: {dep}",
                  f"\t@buildah bud -q --isolation chroot --layers --tls-verify=false "
                  f"--build-arg BASE_IMAGE={base} -t localhost/make/{name}:latest "
                  f"layers/{name} >/dev/null"]
    (root / "Makefile").write_text("\n".join(lines) + "\n")


def registry_floor(root: Path, tb: dict[str, str], namespace: str) -> tuple[int, float]:
    """The lookups a no-op build makes, as bare HEADs on one connection: (count, s)."""
    db = sqlite3.connect(root / "state" / "state.db")
    keys = [(layer, key) for layer, key in db.execute("SELECT layer, build_key FROM layers")]
    db.close()
    seed = tb["ORCH_TEST_SEED_IMAGE"].split("/", 1)[1]
    paths = [f"/v2/{seed}/manifests/{tb['ORCH_TEST_SEED_TAG']}"]
    paths += [f"/v2/{namespace}/{layer}/manifests/bk-{key}" for layer, key in keys]
    host, port = tb["ORCH_TEST_REGISTRY"].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json, "
                        "application/vnd.docker.distribution.manifest.v2+json"}
    started = time.perf_counter()
    for path in paths:
        conn.request("HEAD", path, headers=accept)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200, (path, resp.status)
    took = time.perf_counter() - started
    conn.close()
    return len(paths), took


def main() -> None:
    tb = testbed()
    with tempfile.TemporaryDirectory(prefix="bench-noop-") as tmp:
        root = Path(tmp)
        namespace = write_config(root, tb, jobs=2)
        # The package is byte-compiled once, as an installed one would be.
        subprocess.run([sys.executable, "-m", "compileall", "-q", "orchestrator"], check=True,
                       cwd=Path(__file__).resolve().parent.parent, capture_output=True)
        parents = hierarchy(root)
        seed = f'{tb["ORCH_TEST_SEED_IMAGE"]}:{tb["ORCH_TEST_SEED_TAG"]}'
        makefile(root, parents, seed)

        cold = orchestrator(root, "build")
        assert cold.returncode == 0, cold.stdout + cold.stderr
        subprocess.run(["make", "-j2", "-C", str(root)], check=True)  # warm buildah's cache

        def run_orchestrator() -> None:
            proc = orchestrator(root, "build", "--json")
            assert proc.returncode == 0 and '"outcome": "built"' not in proc.stdout

        def run_make() -> None:
            subprocess.run(["make", "-j2", "-s", "-C", str(root)], check=True)

        def run_python() -> None:
            subprocess.run([sys.executable, "-c", "pass"], check=True)

        ours, theirs, bare, floor = [], [], [], []
        for _ in range(REPEAT):  # interleaved, so drift hits all alike
            ours += timed(run_orchestrator, 1)
            theirs += timed(run_make, 1)
            bare += timed(run_python, 1)
            requests, took = registry_floor(root, tb, namespace)
            floor.append(took)
    o, m, p, r = median(ours), median(theirs), median(bare), median(floor)
    print(f"no-op check, {LAYERS} layers, median of {REPEAT}:")
    print(f"  orchestrator build       : {o:6.3f} s  (goal <= 0.3 s)")
    print(f"  make -j2 (buildah)       : {m:6.3f} s")
    print(f"  ratio to make            : {o / m:6.3f}  (goal <= 0.15)")
    print(f"  floor: python -c pass    : {p:6.3f} s")
    print(f"  floor: {requests} registry HEADs : {r:6.3f} s  (back to back, one connection)")
    print(f"  above the floors         : {o - p - r:6.3f} s")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
