"""No-op check: `orchestrator build` on an up-to-date 50-layer hierarchy vs. a
`make -j2` that calls the builder for every layer and relies on its cache.

Both run side by side in one process, on the same layers, after both have
built once (the orchestrator's images are in the registry, buildah's step
cache is warm for make). Goal: orchestrator <= 0.15 x make.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
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


def main() -> None:
    tb = testbed()
    with tempfile.TemporaryDirectory(prefix="bench-noop-") as tmp:
        root = Path(tmp)
        write_config(root, tb, jobs=2)
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

        ours, theirs = [], []
        for _ in range(REPEAT):  # interleaved, so drift hits both alike
            ours += timed(run_orchestrator, 1)
            theirs += timed(run_make, 1)
    o, m = median(ours), median(theirs)
    print(f"no-op check, {LAYERS} layers, median of {REPEAT}:")
    print(f"  orchestrator build : {o:6.3f} s")
    print(f"  make -j2 (buildah) : {m:6.3f} s")
    print(f"  ratio              : {o / m:6.3f}  (goal <= 0.15)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
