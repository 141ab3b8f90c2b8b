"""Makespan: a cold build of two equal branches with jobs = 2, against the
critical path (the root plus one branch, each layer's build time as recorded
in the same run). Goal: makespan <= 1.10 x critical path.

The makespan is the whole `orchestrator build` command, start to exit: it
includes loading, upstream resolution, lookups and pushes, not just builds.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from benchmarks.common import orchestrator, testbed, write_config, write_layer

DEPTH = 3  # layers per branch
SLEEP_S = 3


def main() -> None:
    tb = testbed()
    with tempfile.TemporaryDirectory(prefix="bench-makespan-") as tmp:
        root = Path(tmp)
        write_config(root, tb, jobs=2)
        parents = {"root": "upstream:seed"}
        for branch in ("a", "b"):
            parent = "root"
            for level in range(DEPTH):
                name = f"{branch}{level}"
                parents[name] = parent
                parent = name
        for name, parent in parents.items():
            write_layer(root, name, parent, f"RUN sleep {SLEEP_S} && echo {name} > /tmp/{name}\n")

        start = time.perf_counter()
        proc = orchestrator(root, "build", "--json")
        makespan = time.perf_counter() - start
        assert proc.returncode == 0, proc.stdout + proc.stderr
        report = json.loads(proc.stdout)

    took = {e["layer"]: e["finished"] - e["started"] for e in report["layers"]}
    paths = {leaf: took["root"] + sum(took[f"{leaf[0]}{i}"] for i in range(DEPTH))
             for leaf in (f"a{DEPTH - 1}", f"b{DEPTH - 1}")}
    critical = max(paths.values())
    serial = sum(took.values())
    print(f"makespan, two branches of {DEPTH} layers (RUN sleep {SLEEP_S}), jobs = 2:")
    print(f"  critical path (recorded builds) : {critical:6.2f} s")
    print(f"  sum of all builds (serial)      : {serial:6.2f} s")
    print(f"  makespan (whole command)        : {makespan:6.2f} s")
    print(f"  ratio makespan / critical path  : {makespan / critical:6.3f}  (goal <= 1.10)")


if __name__ == "__main__":
    main()
