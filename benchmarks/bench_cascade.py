"""The seed chain's cascade: a new pyenv tag on its (loopback) remote, to the app
rebuilt and pushed. examples/debian as shipped (Debian -> pyenv -> CPython
compiled by pyenv -> flask -> app), built cold first (not timed, unless the
engine's caches already hold it), then a new tag on the same commit is pushed
and `orchestrator build` times the cascade. Goal: <= 60 s on this host.

The floor printed beside it: the same four builds' engine time (what the
engines spent; the rest is the orchestrator's and the registry's), and the
python layer's compile with and without the compiler cache (the first cold
build of this run compiles with an empty cache when the engine never built
CPython before).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, orchestrator, testbed

CHAIN = ["pyenv", "python:3.13.5", "flask", "flask-helloworld"]
FIXTURES = ROOT.parent / "shared" / "fixtures" / "upstream-git"


def git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


def prepare(tmp: Path, tb: dict[str, str]) -> tuple[Path, Path]:
    namespace = "bench" + str(time.monotonic_ns())[-8:]
    root = tmp / "debian"
    shutil.copytree(ROOT / "examples" / "debian", root)
    remotes = Path(tb["ORCH_TEST_GIT_BASE"]) / namespace
    remotes.mkdir(parents=True)
    git("clone", "-q", "--mirror", str(FIXTURES / "pyenv.bundle"), str(remotes / "pyenv.git"))
    registry = tb["ORCH_TEST_REGISTRY"]
    config = (root / "config.toml").read_text()
    config = config.replace("127.0.0.1:5000/debian-example", f"{registry}/{namespace}")
    config = config.replace("127.0.0.1:5000/seed/debian", f"{registry}/seed/debian")
    config = config.replace("git://127.0.0.1:9418/pyenv.git",
                            f"{tb['ORCH_TEST_GIT_URL']}/{namespace}/pyenv.git")
    config = config.replace("git://127.0.0.1:9418/pyenv-virtualenv.git",
                            f"{tb['ORCH_TEST_GIT_URL']}/pyenv-virtualenv.git")
    config = re.sub(r'dir = ".*"', 'dir = "state"', config)
    config = re.sub(r'socket = ".*"', 'socket = "control.sock"', config)
    (root / "config.toml").write_text(config)
    pyenv = root / "layers" / "pyenv" / "layer.toml"
    pyenv.write_text(pyenv.read_text().replace('"../../../../layers/pyenv"',
                                               f'"{ROOT / "layers" / "pyenv"}"'))
    python = root / "layers" / "python" / "layer.toml"
    python.write_text(python.read_text().replace("http://127.0.0.1:8765",
                                                 tb["ORCH_TEST_CPYTHON_MIRROR"]))
    host_ca = Path("/etc/ssl/certs/ca-certificates.crt")
    if host_ca.exists():
        shutil.copy(host_ca, root / "layers" / "os" / "ca" / "host.crt")
    return root, remotes


def build(root: Path) -> tuple[float, dict[str, dict[str, Any]]]:
    start = time.perf_counter()
    proc = orchestrator(root, "build", "--json")
    took = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return took, {e["layer"]: e for e in json.loads(proc.stdout)["layers"]}


def main() -> None:
    tb = testbed()
    with tempfile.TemporaryDirectory(prefix="bench-cascade-") as tmp:
        root, remotes = prepare(Path(tmp), tb)
        try:
            cold, layers = build(root)
            compile_cold = layers["python:3.13.5"]["finished"] - layers["python:3.13.5"][
                "started"] if layers["python:3.13.5"]["outcome"] == "built" else None
            head = git("-C", str(remotes / "pyenv.git"), "rev-parse", "v2.8.1^{commit}").strip()
            git("-C", str(remotes / "pyenv.git"), "tag", "v2.99.0", head)  # same commit
            cascade, layers = build(root)
        finally:
            shutil.rmtree(remotes, ignore_errors=True)
    built = [lid for lid in CHAIN if layers[lid]["outcome"] == "built"]
    engine = {lid: layers[lid]["finished"] - layers[lid]["started"] for lid in built}
    print(f"cold build of the chain (first run, not the figure): {cold:.1f} s"
          + (f"; CPython compile then {compile_cold:.1f} s" if compile_cold else ""))
    print(f"cascade after a new pyenv tag (same commit): {cascade:.1f} s (goal <= 60 s)")
    print("  rebuilt: " + ", ".join(f"{lid} {engine[lid]:.1f} s" for lid in built))
    print(f"  floor, the engines' own time: {sum(engine.values()):.1f} s; "
          f"the rest ({cascade - sum(engine.values()):.1f} s): load, lookups, papers, tags")


if __name__ == "__main__":
    main()
