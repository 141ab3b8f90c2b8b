"""What provenance and SBOMs cost per build: the same forced builds with and without
[provenance], side by side in one run, on a busybox layer (a small image) and on
a Debian layer (a 60+ MB base whose layers the SBOM reads back from the registry).

The floor printed is the build alone (attestations off); the ratio is with/without.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import orchestrator, testbed, write_config, write_layer

REPEAT = 3


def catalog(root: Path, tb: dict[str, str], base: str, attest: bool) -> None:
    write_config(root, tb)
    text = (root / "config.toml").read_text()
    if base == "debian":
        text = text.replace(tb["ORCH_TEST_SEED_IMAGE"], tb["ORCH_TEST_DEBIAN_IMAGE"])
        text = text.replace(f'tag = "{tb["ORCH_TEST_SEED_TAG"]}"', 'tag = "bookworm"')
    text += f"\n[provenance]\nenabled = {'true' if attest else 'false'}\n"
    (root / "config.toml").write_text(text)
    write_layer(root, "layer", "upstream:seed", "RUN echo $RANDOM > /tmp/stamp\n")


def build_seconds(root: Path) -> float:
    """The whole command: the build, the push, and (when on) the attestations."""
    started = time.perf_counter()
    proc = orchestrator(root, "build", "--force", "--json")
    took = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["layers"][0]["outcome"] == "built"
    return took


def main() -> None:
    tb = testbed()
    print(f"attestation cost per build (median of {REPEAT} forced builds each):")
    for base in ("busybox", "debian"):
        times: dict[bool, list[float]] = {True: [], False: []}
        with tempfile.TemporaryDirectory(prefix="bench-attest-") as tmp:
            roots = {}
            for attest in (False, True):
                root = Path(tmp) / ("with" if attest else "without")
                root.mkdir()
                catalog(root, tb, base, attest)
                roots[attest] = root
            for _ in range(REPEAT):  # interleaved, so drift hits both alike
                for attest in (False, True):
                    times[attest].append(build_seconds(roots[attest]))
        without, with_ = statistics.median(times[False]), statistics.median(times[True])
        print(f"  {base:8} build alone (floor) {without:6.2f} s, with provenance + SBOM "
              f"{with_:6.2f} s: +{with_ - without:5.2f} s, ratio {with_ / without:5.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
