"""The seed's hierarchy built for real, by the daemon: examples/debian from nothing
(OS -> pyenv -> CPython compiled by pyenv -> flask -> app), the helpers at work
inside the images, a new pyenv tag on the (loopback) remote cascading down to
the app once, and an app edit that rebuilds the app alone.

One long test on purpose: CPython is compiled twice (pyenv v2.8.0, then the
cascade after v2.8.1), and every step stands on the images of the one before.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    ROOT,
    Project,
    Testbed,
    _testbed_settings,
    image_config,
    manifest_digest,
    unique_namespace,
)
from tests.integration.daemon_helpers import DaemonProcess, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.long(7)]
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
FIXTURES = ROOT.parent / "shared" / "fixtures" / "upstream-git"
PYTHON = "3.13.5"
CHAIN = ["os", "pyenv", f"python:{PYTHON}", "flask", "flask-helloworld"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


class Example:
    def __init__(self, root: Path, testbed: Testbed, namespace: str, remotes: Path) -> None:
        self.root = root
        self.testbed = testbed
        self.namespace = namespace
        self.remotes = remotes
        self.docker_env = {**os.environ, "DOCKER_HOST": testbed.docker_host}

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["/usr/bin/docker", *args], capture_output=True, text=True,
                              env=self.docker_env, check=check, timeout=600)

    def image(self, name: str, tag: str) -> str:
        return f"{self.testbed.registry}/{self.namespace}/{name}:{tag}"

    def run_in(self, image: str, script: str) -> subprocess.CompletedProcess[str]:
        return self.docker("run", "--rm", "--network", "host", "--entrypoint", "bash", image,
                           "-c", script, check=False)


@pytest.fixture
def example(tmp_path: Path, testbed: Testbed) -> Iterator[Example]:
    settings = _testbed_settings()
    root = tmp_path / "debian"
    shutil.copytree(ROOT / "examples" / "debian", root, ignore=shutil.ignore_patterns("*.crt"))
    namespace = unique_namespace()
    # Our own pyenv remote holding only the older release; the test "releases"
    # v2.8.1 by pushing the tag there. pyenv-virtualenv: both tags, as shipped.
    remotes = Path(settings["ORCH_TEST_GIT_BASE"]) / namespace
    remotes.mkdir(parents=True)
    git("clone", "-q", "--mirror", str(FIXTURES / "pyenv.bundle"), str(remotes / "pyenv.git"))
    git("-C", str(remotes / "pyenv.git"), "tag", "-d", "v2.8.1")
    git_url = f"{settings['ORCH_TEST_GIT_URL']}/{namespace}"
    config = (root / "config.toml").read_text()
    config = config.replace("127.0.0.1:5000/debian-example", f"{testbed.registry}/{namespace}")
    config = config.replace("127.0.0.1:5000/seed/debian", f"{testbed.registry}/seed/debian")
    config = config.replace("git://127.0.0.1:9418/pyenv.git", f"{git_url}/pyenv.git")
    config = config.replace("git://127.0.0.1:9418/pyenv-virtualenv.git",
                            f"{settings['ORCH_TEST_GIT_URL']}/pyenv-virtualenv.git")
    config = re.sub(r'(\[upstream\.pyenv\][^\[]*?)poll = "6h"', r'\1poll = "3s"', config)
    config = re.sub(r'dir = ".*"', 'dir = "state"', config)
    config = re.sub(r'socket = ".*"', 'socket = "control.sock"', config)
    config += '\n[daemon]\ndebounce = "300ms"\n'
    (root / "config.toml").write_text(config)
    pyenv = root / "layers" / "pyenv" / "layer.toml"
    pyenv.write_text(pyenv.read_text().replace('"../../../../layers/pyenv"',
                                               f'"{ROOT / "layers" / "pyenv"}"'))
    python = root / "layers" / "python" / "layer.toml"
    python.write_text(python.read_text().replace("http://127.0.0.1:8765",
                                                 settings["ORCH_TEST_CPYTHON_MIRROR"]))
    if HOST_CA.exists():  # the intercepting proxy's CA, so pip reaches PyPI
        shutil.copy(HOST_CA, root / "layers" / "os" / "ca" / "host.crt")
    yield Example(root, testbed, namespace, remotes)
    shutil.rmtree(remotes, ignore_errors=True)


def builds_by_layer(daemon: DaemonProcess) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for build in reversed(daemon.builds()):
        out.setdefault(build["layer"], []).append(build)
    return out


def answers(example: Example, port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
            return str(resp.read().decode())
    except OSError:
        return None


def serve_app(example: Example) -> tuple[str, int]:
    port = free_port()
    name = f"hello-{example.namespace}-{port}"
    example.docker("pull", example.image("flask-helloworld", "1.0.0"))
    example.docker("run", "-d", "--name", name, "--network", "host",
                   "-e", f"FLASK_RUN_PORT={port}", example.image("flask-helloworld", "1.0.0"))
    return name, port


@pytest.mark.timeout(3000)
def test_the_seed_chain_builds_answers_and_cascades(example: Example) -> None:
    started = time.monotonic()
    daemon = DaemonProcess(Project(example.root)).ready(120)
    try:
        daemon.idle(1800)
        cold = time.monotonic() - started
        history = builds_by_layer(daemon)
        assert {layer: [b["outcome"] for b in builds] for layer, builds in history.items()} == \
            {layer: ["built"] for layer in CHAIN}, daemon.logs()[-4000:]
        compile_s = history[f"python:{PYTHON}"][0]["finished_at"] - \
            history[f"python:{PYTHON}"][0]["started_at"]
        print(f"cold build of the chain: {cold:.0f} s (CPython compile layer {compile_s:.0f} s)")

        check_app_and_labels(example, pyenv_tag="v2.8.0")
        check_helpers(example)

        # -- a new pyenv release on the remote cascades to the app, once ------
        pushed = time.monotonic()
        git("-C", str(example.remotes / "pyenv.git"), "fetch", "-q",
            str(FIXTURES / "pyenv.bundle"), "refs/tags/v2.8.1:refs/tags/v2.8.1")
        wait_until(lambda: len(builds_by_layer(daemon).get("flask-helloworld", [])) == 2
                   and builds_by_layer(daemon)["flask-helloworld"][-1]["outcome"] != "running",
                   1800, 2, "the cascade to reach the app")
        daemon.idle(300)
        cascade = time.monotonic() - pushed
        history = builds_by_layer(daemon)
        # pyenv and everything under it once more; the OS layer does not stand on pyenv.
        assert {layer: [b["outcome"] for b in builds] for layer, builds in history.items()} == \
            {"os": ["built"], **{layer: ["built", "built"] for layer in CHAIN[1:]}}
        pyenv_build = history["pyenv"][-1]
        assert pyenv_build["cause"].startswith("upstream pyenv changed: v2.8.0@")
        assert "-> v2.8.1@" in pyenv_build["cause"]
        # Each child names the change and the parent build it stood on, in order.
        for parent, child in itertools.pairwise(CHAIN[1:]):
            build = history[child][-1]
            assert f"parent build {history[parent][-1]['id']}" in build["cause"], build
            assert "upstream pyenv changed" in build["cause"], build
            assert build["started_at"] >= history[parent][-1]["finished_at"]
        print(f"cascade after the pyenv tag push: {cascade:.0f} s")
        check_app_and_labels(example, pyenv_tag="v2.8.1")

        # A second poll with nothing new rebuilds nothing.
        before = len(daemon.builds())
        time.sleep(8)  # more than two polls of 3 s
        assert len(daemon.builds()) == before

        # -- papers: the chain and the bill of materials, from the registry -----
        check_papers(example, daemon)
        before = len(daemon.builds())

        # -- an app edit rebuilds the app alone, in seconds ---------------------
        source = example.root / "layers" / "flask-helloworld" / "app" / "helloworld.py"
        source.write_text(source.read_text().replace('"Hello, World!"',
                                                     '"Hello, World! (v2)"'))
        wait_until(lambda: len(daemon.builds()) == before + 1
                   and daemon.builds()[0]["outcome"] == "built", 300, 0.5, "app rebuild")
        daemon.idle(120)
        app = daemon.builds()[0]
        assert app["layer"] == "flask-helloworld" and len(daemon.builds()) == before + 1
        print(f"app-only rebuild: {app['finished_at'] - app['started_at']:.1f} s")
    finally:
        daemon.stop()


def check_app_and_labels(example: Example, pyenv_tag: str) -> None:
    name, port = serve_app(example)
    try:
        assert wait_until(lambda: answers(example, port), 60, 0.3, "the app") == "Hello, World!"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/index", timeout=5) as resp:
            assert resp.read().decode() == "Hello, World!"
        assert example.docker("exec", name, "id", "-u").stdout.strip() == "1000"
    finally:
        example.docker("rm", "-f", name, check=False)
    labels = image_config(example.testbed.registry, f"{example.namespace}/flask-helloworld",
                          "1.0.0")["config"]["Labels"]
    assert labels["io.github.pyenv.version"] == pyenv_tag
    assert labels["org.python.version"] == PYTHON
    flask_digest = api_digest(example, "flask", "3.1.0")
    assert labels["org.opencontainers.image.base.digest"] == flask_digest
    for key in ("title", "version", "created", "source", "base.name"):
        assert labels[f"org.opencontainers.image.{key}"], key


def api_digest(example: Example, image: str, tag: str) -> str:
    digest = manifest_digest(example.testbed.registry, f"{example.namespace}/{image}", tag)
    assert digest is not None
    return digest


def orchestrator_cli(example: Example, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", "-c",
                           str(example.root / "config.toml"), *args], capture_output=True,
                          text=True, timeout=300)


def check_papers(example: Example, daemon: DaemonProcess) -> None:
    """explain on the app prints every level down to the Debian upstream with its
    cause; the flask SBOM lists Flask and the base's Debian packages; a
    requirements change shows up as exactly that change in sbom --diff."""
    app = example.image("flask-helloworld", "1.0.0")
    out = orchestrator_cli(example, "explain", app, "--json")
    assert out.returncode == 0, out.stderr
    chain = json.loads(out.stdout)
    assert [level["layer"] for level in chain] == [*reversed(CHAIN), None]
    assert "seed/debian" in chain[-1]["image"]
    assert all("upstream pyenv changed" in level["cause"] for level in chain[:4])
    flask = example.image("flask", "3.1.0")
    sbom = json.loads(orchestrator_cli(example, "sbom", flask).stdout)
    purls = {c.get("purl", "") for c in sbom["components"]}
    assert any(p.startswith("pkg:pypi/flask@3.1.0") for p in purls)
    assert any(p.startswith("pkg:deb/debian/libc6@") for p in purls)
    assert any(p.startswith(f"pkg:generic/cpython@{PYTHON}") for p in purls)
    old_flask = api_digest(example, "flask", "3.1.0")
    requirements = example.root / "layers" / "flask" / "requirements.txt"
    requirements.write_text(requirements.read_text() + "six==1.16.0\n")
    count = len(daemon.builds())
    wait_until(lambda: len(daemon.builds()) >= count + 2
               and daemon.builds()[0]["outcome"] != "running", 600, 1, "flask and app rebuilt")
    daemon.idle(300)
    diff = orchestrator_cli(example, "sbom", flask, "--diff",
                            f"{example.testbed.registry}/{example.namespace}/flask@{old_flask}")
    assert diff.returncode == 0, diff.stderr
    assert diff.stdout.strip().splitlines() == ["+ pypi six 1.16.0"], diff.stdout


def check_helpers(example: Example) -> None:
    python = example.image("python", PYTHON)
    flask = example.image("flask", "3.1.0")
    example.docker("pull", python)
    example.docker("pull", flask)
    run = example.run_in
    usage = run(python, "install-python.sh")
    assert usage.returncode == 2 and "usage: install-python.sh VERSION" in usage.stderr
    unknown = run(python, "install-python.sh 9.99.99")
    assert unknown.returncode == 2 and "no definition for '9.99.99'" in unknown.stderr
    again = run(python, f"time -p install-python.sh {PYTHON}")
    assert again.returncode == 0 and f"Python {PYTHON}" in again.stdout, again.stderr
    as_user = run(python, "id -u; python -V; pyenv versions --bare")
    assert as_user.stdout.split() == ["1000", "Python", PYTHON, PYTHON], as_user
    venv = run(python, f"pyenv virtualenv {PYTHON} demo-env >/dev/null && "
                       "pyenv versions --bare && "
                       "$(pyenv root)/versions/demo-env/bin/python -c 'import sys; "
                       "print(sys.prefix)'")
    assert venv.returncode == 0 and "demo-env" in venv.stdout, venv.stderr[-2000:]
    usage = run(flask, "install-requirements.sh")
    assert usage.returncode == 2 and "usage: install-requirements.sh" in usage.stderr
    missing = run(flask, "install-requirements.sh /nope.txt")
    assert missing.returncode == 2 and "no file /nope.txt" in missing.stderr
    real = run(flask, "echo six==1.16.0 > /tmp/r.txt && install-requirements.sh /tmp/r.txt && "
                      "python -c 'import six, flask; print(six.__version__, flask.__version__)'")
    assert real.returncode == 0 and "1.16.0 3.1.0" in real.stdout, real.stderr[-2000:]
    versions = run(flask, "python -m pip list --format json")
    assert {p["name"].lower(): p["version"] for p in json.loads(versions.stdout)}["flask"] \
        == "3.1.0"
