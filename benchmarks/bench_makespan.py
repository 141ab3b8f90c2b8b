"""Makespan: a cold build of two equal branches with jobs = 2, against the
critical path (the root plus one branch, each layer's engine time as recorded
in the same run). Goal: makespan <= 1.10 x critical path.

The makespan is the whole `orchestrator build` command, start to exit: it
includes loading, upstream resolution, lookups and pushes, not just builds.
Where the rest goes is printed per step (each build's steps, summed along the
critical path): decide (inputs, key, lookup), snapshot, record (history rows),
run (the engine: build and its one push), attest, tag (key tag, human tags).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import orchestrator, testbed, write_config, write_layer

DEPTH = 3  # layers per branch
SLEEP_S = 3
STEPS = ("decide", "snapshot", "record", "run", "push", "attest", "tag")


def one_run(provenance: bool) -> tuple[float, dict[str, dict[str, Any]]]:
    tb = testbed()
    with tempfile.TemporaryDirectory(prefix="bench-makespan-") as tmp:
        root = Path(tmp)
        write_config(root, tb, jobs=2)
        if not provenance:
            with (root / "config.toml").open("a") as config:
                config.write("[provenance]\nenabled = false\n")
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
    return makespan, {e["layer"]: e for e in report["layers"]}


def critical(layers: dict[str, dict[str, Any]]) -> tuple[float, list[str]]:
    took = {lid: e["finished"] - e["started"] for lid, e in layers.items()}
    paths = {branch: ["root", *(f"{branch}{i}" for i in range(DEPTH))] for branch in "ab"}
    best = max(paths.values(), key=lambda path: sum(took[lid] for lid in path))
    return sum(took[lid] for lid in best), best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-provenance", action="store_true")
    args = parser.parse_args()
    ratios = []
    for n in range(args.runs):
        makespan, layers = one_run(not args.no_provenance)
        engine, path = critical(layers)
        ratios.append(makespan / engine)
        print(f"run {n + 1}: makespan {makespan:6.2f} s, critical path (engine time) "
              f"{engine:6.2f} s, ratio {makespan / engine:5.3f}")
        along = {step: sum(layers[lid]["steps"].get(step, 0.0) for lid in path)
                 for step in STEPS}
        print("  along the critical path, per step (s): " +
              ", ".join(f"{step} {seconds:.2f}" for step, seconds in along.items() if seconds))
        # run includes the engine's push; the rest is the time between builds
        gaps = [layers[child]["started"] - layers[parent]["finished"]
                for parent, child in itertools.pairwise(path)]
        print("  parent's engine end -> child's engine start (s): " +
              ", ".join(f"{gap:.2f}" for gap in gaps))
    print(f"ratio makespan / critical path: median {statistics.median(ratios):.3f} "
          f"of {args.runs} runs (goal <= 1.10); floor 1.0 = the engines' own time")


if __name__ == "__main__":
    main()
