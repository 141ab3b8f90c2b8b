"""Two platforms against one: the same three-layer busybox hierarchy built cold and
then checked with nothing to do, for linux/amd64 alone and for linux/amd64 +
linux/arm64 (arm64 RUN steps under QEMU), side by side in one run."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import orchestrator, testbed, write_config, write_layer


def catalog(root: Path, tb: dict[str, str], platforms: list[str]) -> None:
    write_config(root, tb)
    text = (root / "config.toml").read_text()
    text = text.replace(tb["ORCH_TEST_SEED_IMAGE"], tb["ORCH_TEST_MULTI_IMAGE"])
    text = text.replace('jobs = 2\n', 'jobs = 2\nplatforms = [' +
                        ", ".join(f'"{p}"' for p in platforms) + "]\n")
    (root / "config.toml").write_text(text + "\n[provenance]\nsbom = false\n")
    write_layer(root, "base", "upstream:seed", "RUN uname -m > /tmp/arch\n")
    write_layer(root, "tools", "base", "RUN echo tools > /tmp/tools\n")
    write_layer(root, "app", "tools", "COPY app.sh /tmp/app.sh\n")
    (root / "layers" / "app" / "app.sh").write_text("echo app\n")


def timed_build(root: Path) -> float:
    started = time.perf_counter()
    proc = orchestrator(root, "build")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return time.perf_counter() - started


def main() -> None:
    tb = testbed()
    results = {}
    for platforms in (["linux/amd64"], ["linux/amd64", "linux/arm64"]):
        with tempfile.TemporaryDirectory(prefix="bench-platforms-") as tmp:
            root = Path(tmp)
            catalog(root, tb, platforms)
            cold = timed_build(root)
            noop = min(timed_build(root) for _ in range(3))
            results[len(platforms)] = (cold, noop)
    (c1, n1), (c2, n2) = results[1], results[2]
    print("three layers, cold build and no-op check (best of 3):")
    print(f"  linux/amd64            cold {c1:6.2f} s   no-op {n1:6.3f} s")
    print(f"  linux/amd64 + arm64    cold {c2:6.2f} s   no-op {n2:6.3f} s")
    print(f"  ratio two/one          cold {c2 / c1:6.2f}     no-op {n2 / n1:6.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
