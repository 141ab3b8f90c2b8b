"""Planning scale: a 2,000-layer synthetic catalog on disk, planned and then
scheduled through a builder that does nothing. Goal: load + plan + schedule
<= 1.5 s. Five runs, each a fresh process on a fresh catalog (as a user's
`orchestrator build` is), and their median: this host's file system calls
make single runs noisy. The catalog is synced to disk before the clock
starts, as a user's is at rest: otherwise its 8,000 new files are written
back during the run. `--profile [order]` runs once and prints where the
schedule phase spends its time.

Measures the orchestrator's own work: loading and validating the catalog,
reading every context, build keys, decisions, the graph run and the state
writes. Local mode (no registry), so lookups go to the no-op builder.
"""

from __future__ import annotations

import asyncio
import cProfile
import hashlib
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orchestrator.build.runs import execute, load
from orchestrator.build.snapshot import Snapshots, scratch_path
from orchestrator.catalog.context import read_context
from orchestrator.core.model import BuilderSpec, Catalog, Outcome
from orchestrator.engines.base import BuildOutput, BuildRequest

LAYERS = 2000
RUNS = 5
FANOUT = 4


class NoopBuilder:
    name = "noop"
    version = "0"

    async def build(self, request: BuildRequest) -> BuildOutput:
        return BuildOutput("sha256:" + hashlib.sha256(request.tags[-1].encode()).hexdigest())

    async def local_digest(self, ref: str) -> str | None:
        return None

    def base_reference(self, repository: str, digest: str, key_tag_ref: str) -> str:
        return f"{repository}@{digest}"

    async def ping(self) -> None:
        return None

    async def prune_local(self, repository: str, label: str, keep: int,
                          protect: set[str]) -> int:
        return 0

    async def clean_up_after_crash(self, base_refs: set[str]) -> int:
        return 0


def write_catalog(root: Path) -> None:
    (root / "config.toml").write_text(
        '[catalog]\nlayers = "layers"\n[state]\ndir = "state"\n'
        '[upstream.seed]\nimage = "127.0.0.1:9/seed"\ntag = "1"\ntls_verify = false\n')
    for i in range(LAYERS):
        folder = root / "layers" / f"l{i:04d}"
        folder.mkdir(parents=True)
        parent = "upstream:seed" if i == 0 else f"l{(i - 1) // FANOUT:04d}"
        (folder / "layer.toml").write_text(f'from = "{parent}"\n')
        (folder / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN true\n")
        (folder / "file.txt").write_text(f"{i}\n")


async def run(root: Path) -> None:
    import orchestrator.build.runs as runs
    from orchestrator.core.model import ResolvedUpstream
    from orchestrator.registry import upstream

    async def fake_resolve(specs, names, client):  # type: ignore[no-untyped-def]
        return {n: ResolvedUpstream(n, "127.0.0.1:9/seed@sha256:" + "0" * 64,
                                    "sha256:" + "0" * 64, "1") for n in names}, {}

    runs.resolve_all = fake_resolve  # the registry seam; everything else is real
    del upstream
    noop = NoopBuilder()
    runs.make_builders = lambda *a, **k: [(BuilderSpec("noop", "buildah"), noop)]  # type: ignore[assignment]

    t0 = time.perf_counter()
    config, catalog = load(root / "config.toml")
    t1 = time.perf_counter()
    plan = await execute(config, catalog, dry_run=True)
    t2 = time.perf_counter()
    profiler = cProfile.Profile() if "--profile" in sys.argv else None
    if profiler is not None:
        profiler.enable()
    report = await execute(config, catalog)
    t3 = time.perf_counter()
    if profiler is not None:
        profiler.disable()
        order = sys.argv[sys.argv.index("--profile") + 1:] or ["tottime"]  # e.g. cumulative
        pstats.Stats(profiler).sort_stats(*order).print_stats(30)
    again = await execute(config, catalog, dry_run=True)
    t4 = time.perf_counter()
    assert len(report.by_outcome(Outcome.BUILT)) == LAYERS and report.ok
    assert len(plan.results) == LAYERS
    del again
    print(f"planning scale, {LAYERS} layers (fan-out {FANOUT}), no-op builder:")
    print(f"  load + validate catalog : {t1 - t0:6.3f} s")
    print(f"  plan (cold)             : {t2 - t1:6.3f} s")
    print(f"  schedule (build all)    : {t3 - t2:6.3f} s")
    print(f"  plan (all up to date)   : {t4 - t3:6.3f} s   [lookups hit the no-op store]")
    print(f"  load + plan + schedule  : {t3 - t0:6.3f} s  (goal <= 1.5 s)")
    scratch = scratch_path(config.scratch, config.state_dir)
    floor = await snapshot_floor(config.state_dir / "floor", catalog, scratch)
    print(f"  floor: {LAYERS} snapshots made and removed, nothing else: {floor:6.3f} s"
          f"  (each build copies its hashed context, here to {scratch or 'the state dir'})")
    print(f"TOTAL {t3 - t0:.6f}")


async def snapshot_floor(work: Path, catalog: Catalog, scratch: Path | None) -> float:
    """What 2,000 snapshots alone cost here, made and removed one after the
    other as a one-shot run does (folders kept between builds)."""
    pairs = [(layer, read_context(layer)) for layer in catalog.layers.values()]
    snapshots = Snapshots(inline=True, scratch=lambda: scratch)
    started = time.perf_counter()
    for i, (layer, ctx) in enumerate(pairs):
        async with snapshots.snapshot(layer, ctx, work / str(i)):
            pass
    snapshots.close()
    return time.perf_counter() - started


def main() -> None:
    if "--profile" in sys.argv or "--once" in sys.argv:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            write_catalog(Path(tmp))
            os.sync()  # the catalog at rest, as a user's is: not written back during the run
            asyncio.run(run(Path(tmp)))
        return
    totals = []
    for n in range(RUNS):
        out = subprocess.run([sys.executable, "-m", "benchmarks.bench_plan_scale", "--once"],
                             check=True, capture_output=True, text=True).stdout
        print(f"run {n + 1} of {RUNS}:")
        print("\n".join(line for line in out.splitlines() if not line.startswith("TOTAL")))
        totals.append(float(out.rsplit("TOTAL ", 1)[1]))
    print(f"load + plan + schedule, {RUNS} runs: "
          + " / ".join(f"{t:.3f}" for t in totals)
          + f" s; median {statistics.median(totals):.3f} s (goal <= 1.5 s)")


if __name__ == "__main__":
    main()
