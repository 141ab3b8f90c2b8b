"""A shared build cache across a pool: a layer built on one Docker engine, then
changed after its expensive step and rebuilt on the *other* engine, without and
with ``[registry] cache`` (Docker 20.10: inline cache, imported with
--cache-from). Side by side in one run; the floor is the expensive step itself.
"""

from __future__ import annotations

import json
import sys
import tempfile
import uuid
from pathlib import Path

from benchmarks.common import orchestrator, testbed, write_layer

STEP_S = 8


def config(root: Path, tb: dict[str, str], namespace: str, host: str, cache: bool) -> None:
    cache_line = 'cache = "build-cache"\n' if cache else ""
    (root / "config.toml").write_text(
        f'[catalog]\nlayers = "layers"\n'
        f'[registry]\nurl = "{tb["ORCH_TEST_REGISTRY"]}/{namespace}"\ntls_verify = false\n'
        f"{cache_line}"
        f'[build]\nbackend = "buildkit"\n[build.buildkit]\ndocker_host = "{host}"\n'
        f'[state]\ndir = "state"\n'
        f'[upstream.seed]\nimage = "{tb["ORCH_TEST_SEED_IMAGE"]}"\n'
        f'tag = "{tb["ORCH_TEST_SEED_TAG"]}"\ntls_verify = false\n')


def heavy_seconds(root: Path) -> float:
    proc = orchestrator(root, "build", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    entry = next(e for e in json.loads(proc.stdout)["layers"] if e["layer"] == "heavy")
    assert entry["outcome"] == "built"
    return float(entry["finished"]) - float(entry["started"])


def run(tb: dict[str, str], cache: bool) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        root = Path(tmp)
        namespace = "bench" + uuid.uuid4().hex[:8]
        nonce = uuid.uuid4().hex  # no engine has this step cached from an earlier run
        write_layer(root, "heavy", "upstream:seed",
                    f"RUN echo {nonce} && sleep {STEP_S} && echo done > /tmp/heavy\n"
                    "COPY data.txt /tmp/data.txt\n")
        data = root / "layers" / "heavy" / "data.txt"
        data.write_text("one\n")
        config(root, tb, namespace, tb["ORCH_TEST_DOCKER_HOST"], cache)
        heavy_seconds(root)  # engine 1, cold
        data.write_text("two\n")  # a change after the expensive step
        config(root, tb, namespace, tb["ORCH_TEST_DOCKER2_HOST"], cache)
        return heavy_seconds(root)  # engine 2


def main() -> None:
    tb = testbed()
    without = run(tb, cache=False)
    with_cache = run(tb, cache=True)
    print("rebuild on the other engine of a two-engine pool, after a change below an "
          f"{STEP_S} s step:")
    print(f"  floor (the expensive step)  : {STEP_S:6.2f} s")
    print(f"  without [registry] cache    : {without:6.2f} s")
    print(f"  with [registry] cache       : {with_cache:6.2f} s")
    print(f"  ratio with/without          : {with_cache / without:6.3f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
