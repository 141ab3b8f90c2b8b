"""Makespan with one engine vs two, on the same hierarchy, side by side in one run.

Two independent branches of three layers under a common base, each layer a
`RUN sleep`; every engine has one slot. Both runs are cold (fresh registry
namespaces). The makespan is the whole `orchestrator build` command.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.common import orchestrator, testbed, write_config, write_layer

SLEEP_S = 3
DEPTH = 3


def pool(root: Path, tb: dict[str, str], engines: list[str]) -> None:
    write_config(root, tb, jobs=len(engines), backend="buildkit")
    blocks = "".join(f'[[builders]]\nname = "engine-{i}"\nbackend = "docker"\n'
                     f'address = "{address}"\nslots = 1\n' for i, address in enumerate(engines))
    (root / "config.toml").write_text((root / "config.toml").read_text() + blocks)


def run(tb: dict[str, str], engines: list[str]) -> tuple[float, dict[str, str]]:
    nonce = uuid.uuid4().hex
    with tempfile.TemporaryDirectory(prefix="bench-pool-") as tmp:
        root = Path(tmp)
        pool(root, tb, engines)
        write_layer(root, "base", "upstream:seed", "RUN true\n")
        for branch in ("a", "b"):
            parent = "base"
            for level in range(DEPTH):
                name = f"{branch}{level}"
                # A nonce per run and layer: no engine may answer from its step cache.
                write_layer(root, name, parent, f"RUN sleep {SLEEP_S} && echo {name} {nonce}\n")
                parent = name
        start = time.perf_counter()
        proc = orchestrator(root, "build", "--json")
        took = time.perf_counter() - start
        assert proc.returncode == 0, proc.stdout + proc.stderr
        report = json.loads(proc.stdout)
        return took, {e["layer"]: e["builder"] for e in report["layers"]}


def main() -> None:
    tb = testbed()
    one, _ = run(tb, [tb["ORCH_TEST_DOCKER_HOST"]])
    two, placement = run(tb, [tb["ORCH_TEST_DOCKER_HOST"], tb["ORCH_TEST_DOCKER2_HOST"]])
    print(f"builder pool, two branches of {DEPTH} layers (RUN sleep {SLEEP_S}), 1 slot each:")
    print(f"  one engine  : {one:6.2f} s")
    print(f"  two engines : {two:6.2f} s   placement: {placement}")
    print(f"  ratio two/one: {two / one:5.3f}")


if __name__ == "__main__":
    main()
