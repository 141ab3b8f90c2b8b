"""Critical-path-first against first-come-first-served, with slots contended.

After the root, three leaves and the head of a three-layer chain are ready at
once for two slots (jobs = 2), the leaves first in folder order. First come
first served gives both slots to leaves, and the chain waits; critical-path
first starts the chain at once. Both runs are
forced rebuilds of the same hierarchy, so the scheduler knows each layer's
expected time from the history of the cold build before them. Floor: the
critical path's own engine time.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from benchmarks.common import orchestrator, testbed, write_config, write_layer

SLEEP_S = 3


def run(order: str) -> tuple[float, float]:
    tb = testbed()
    with tempfile.TemporaryDirectory(prefix="bench-priority-") as tmp:
        root = Path(tmp)
        write_config(root, tb, jobs=2)
        with (root / "config.toml").open("a") as config:
            config.write('[provenance]\nenabled = false\n')
        text = (root / "config.toml").read_text().replace(
            "[build]\n", f'[build]\norder = "{order}"\n')
        (root / "config.toml").write_text(text)
        layers = {"root": "upstream:seed", "a-leaf1": "root", "a-leaf2": "root",
                  "a-leaf3": "root", "z-chain0": "root", "z-chain1": "z-chain0",
                  "z-chain2": "z-chain1"}
        for name, parent in layers.items():
            write_layer(root, name, parent, f"RUN sleep {SLEEP_S} && echo {name} > /tmp/{name}\n")
        cold = orchestrator(root, "build")
        assert cold.returncode == 0, cold.stdout + cold.stderr
        start = time.perf_counter()
        forced = orchestrator(root, "build", "--force", "--json")
        makespan = time.perf_counter() - start
        assert forced.returncode == 0, forced.stdout + forced.stderr
        report = {e["layer"]: e for e in json.loads(forced.stdout)["layers"]}
    chain = ["root", "z-chain0", "z-chain1", "z-chain2"]
    floor = sum(report[lid]["finished"] - report[lid]["started"] for lid in chain)
    return makespan, floor


def main() -> None:
    results = {order: run(order) for order in ("fifo", "critical-path")}
    for order, (makespan, floor) in results.items():
        print(f"{order:14s}: forced rebuild of 7 layers (3 leaves + a chain of 3), jobs = 2: "
              f"{makespan:6.2f} s; critical path's engine time {floor:5.2f} s; "
              f"ratio {makespan / floor:5.3f}")
    gain = results["fifo"][0] / results["critical-path"][0]
    print(f"first-come-first-served / critical-path-first: {gain:5.3f}")


if __name__ == "__main__":
    main()
