"""Helpers shared by the benchmarks: writing synthetic catalogs, timing commands."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def testbed() -> dict[str, str]:
    """The test bed's settings: ORCH_TEST_* from the environment (a worktree loads
    the main checkout's env file), else this checkout's .testbed/env."""
    found = {k: v for k, v in os.environ.items() if k.startswith("ORCH_TEST_")}
    env_file = ROOT / ".testbed" / "env"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                found.setdefault(key, value)
    if "ORCH_TEST_REGISTRY" not in found:
        sys.exit("benchmarks need the test bed: scripts/testbed up")
    return found


def write_config(root: Path, tb: dict[str, str], *, jobs: int = 2, registry: bool = True,
                 backend: str = "buildah") -> str:
    namespace = "bench" + uuid.uuid4().hex[:8]
    registry_block = (f'[registry]\nurl = "{tb["ORCH_TEST_REGISTRY"]}/{namespace}"\n'
                      "tls_verify = false\n") if registry else ""
    (root / "config.toml").write_text(
        f'[catalog]\nlayers = "layers"\n{registry_block}'
        f'[build]\nbackend = "{backend}"\njobs = {jobs}\n'
        f'[build.buildkit]\ndocker_host = "{tb["ORCH_TEST_DOCKER_HOST"]}"\n'
        f'[state]\ndir = "state"\n'
        f'[upstream.seed]\nimage = "{tb["ORCH_TEST_SEED_IMAGE"]}"\n'
        f'tag = "{tb["ORCH_TEST_SEED_TAG"]}"\ntls_verify = false\n')
    return namespace


def write_layer(root: Path, name: str, parent: str, body: str) -> None:
    folder = root / "layers" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "layer.toml").write_text(f'from = "{parent}"\n')
    (folder / "Dockerfile").write_text(f"ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}}\n{body}USER 1000\n")


def orchestrator(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", "-c", str(root / "config.toml"),
                           *args], capture_output=True, text=True, check=False, cwd=root,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def timed(fn: object, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append(time.perf_counter() - start)
    return out


def median(values: list[float]) -> float:
    return statistics.median(values)
