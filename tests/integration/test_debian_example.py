"""End to end: examples/debian built from nothing by the orchestrator, the app
container answering over HTTP, the helper script at work, and an app edit that
rebuilds the app layer alone."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, Testbed, built, unique_namespace
from tests.integration.daemon_helpers import wait_until

pytestmark = pytest.mark.integration
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Example:
    def __init__(self, root: Path, testbed: Testbed, namespace: str) -> None:
        self.root = root
        self.testbed = testbed
        self.namespace = namespace
        self.docker_env = {**os.environ, "DOCKER_HOST": testbed.docker_host}

    def orchestrator(self, *args: str) -> tuple[int, dict[str, object], str]:
        proc = subprocess.run(["orchestrator", "-c", str(self.root / "config.toml"), *args,
                               "--json"], capture_output=True, text=True, timeout=1200)
        return proc.returncode, json.loads(proc.stdout or "{}"), proc.stderr

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["/usr/bin/docker", *args], capture_output=True, text=True,
                              env=self.docker_env, check=check, timeout=300)

    def image(self, name: str, tag: str) -> str:
        return f"{self.testbed.registry}/{self.namespace}/{name}:{tag}"


@pytest.fixture
def example(tmp_path: Path, testbed: Testbed) -> Iterator[Example]:
    root = tmp_path / "debian"
    shutil.copytree(ROOT / "examples" / "debian", root,
                    ignore=shutil.ignore_patterns("*.crt"))
    namespace = unique_namespace()
    config = (root / "config.toml").read_text()
    config = config.replace("127.0.0.1:5000/debian-example", f"{testbed.registry}/{namespace}")
    config = config.replace("127.0.0.1:5000/seed/debian", f"{testbed.registry}/seed/debian")
    config = re.sub(r'dir = ".*"', 'dir = "state"', config)
    config = re.sub(r'socket = ".*"', 'socket = "control.sock"', config)
    (root / "config.toml").write_text(config)
    if HOST_CA.exists():  # the intercepting proxy's CA, so pip reaches PyPI
        shutil.copy(HOST_CA, root / "layers" / "os" / "ca" / "host.crt")
    yield Example(root, testbed, namespace)


def test_debian_example_end_to_end(example: Example) -> None:
    rc, report, err = example.orchestrator("build")
    assert rc == 0, err[-3000:]
    assert built(report) == {"os", "python", "flask", "flask-helloworld"}

    app = example.image("flask-helloworld", "1.0.0")
    port = free_port()
    name = f"hello-{example.namespace}"
    example.docker("run", "-d", "--name", name, "--network", "host",
                   "-e", f"FLASK_RUN_PORT={port}", app)
    try:
        def get(path: str) -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                    return str(r.read().decode())
            except OSError:
                return None

        assert wait_until(lambda: get("/"), 60, 0.2, "the app to answer") == "Hello, World!"
        assert get("/index") == "Hello, World!"
        assert example.docker("exec", name, "id", "-u").stdout.strip() == "1000"
    finally:
        example.docker("rm", "-f", name, check=False)

    # The requirements helper, inside the framework image it serves.
    flask = example.image("flask", "3.1.0")
    helper = ["run", "--rm", "--network", "host", "--entrypoint", "install-requirements.sh"]
    usage = example.docker(*helper, flask, check=False)
    assert usage.returncode == 2 and "usage: install-requirements.sh" in usage.stderr
    missing = example.docker(*helper, flask, "/nope.txt", check=False)
    assert missing.returncode == 2 and "no file /nope.txt" in missing.stderr
    install = example.docker("run", "--rm", "--network", "host", "--entrypoint", "sh", flask,
                             "-c", "echo six==1.16.0 > /tmp/r.txt && "
                             "install-requirements.sh /tmp/r.txt && python -c 'import six'",
                             check=False)
    assert install.returncode == 0, install.stderr[-2000:]

    # Editing the app rebuilds the app layer only.
    source = example.root / "layers" / "flask-helloworld" / "app" / "helloworld.py"
    source.write_text(source.read_text().replace('"Hello, World!"', '"Hello, World! (v2)"'))
    rc, report, err = example.orchestrator("build")
    assert rc == 0, err[-3000:]
    assert built(report) == {"flask-helloworld"}
    entry = next(e for e in report["layers"] if e["layer"] == "flask-helloworld")  # type: ignore[attr-defined]
    print(f"app-only rebuild: {entry['finished'] - entry['started']:.2f} s")
