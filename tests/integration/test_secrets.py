"""Build secrets on both engines: a layer authenticates to a loopback package index
with a secret; the canary value is nowhere afterwards (image layers, history,
labels, logs, state, events), and rotating it rebuilds nothing."""

from __future__ import annotations

import contextlib
import gzip
import json
import subprocess
import threading
import uuid
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import Project, Testbed, unique_namespace
from tests.integration.hierarchy import write_config

pytestmark = pytest.mark.integration


def bridge_address() -> str:
    """An address of this host that both buildah (host network) and the Docker
    engine's build containers (its bridge) reach."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True,
                         text=True).stdout
    return out.split()[3].split("/")[0] if out else "127.0.0.1"


class Index(ThreadingHTTPServer):
    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, Handler)
        self.token = ""
        self.hits: list[str] = []


class Handler(BaseHTTPRequestHandler):
    server: Index

    def do_GET(self) -> None:
        ok = self.headers.get("Authorization") == f"Bearer {self.server.token}"
        self.server.hits.append("ok" if ok else "denied")
        self.send_response(200 if ok else 401)
        self.end_headers()
        if ok:
            self.wfile.write(b"package contents\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def index() -> Iterator[Index]:
    server = Index((bridge_address(), 0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def everything_contains(root: Path, canary: bytes) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        candidates = [data]
        for opener in (gzip.decompress, zlib.decompress):
            with contextlib.suppress(Exception):  # not compressed that way
                candidates.append(opener(data))
        if any(canary in blob for blob in candidates):
            found.append(str(path))
    return found


@pytest.mark.parametrize("backend", ["buildah", "buildkit"])
def test_a_secret_is_used_and_found_nowhere(project: Project, testbed: Testbed, index: Index,
                                            tmp_path: Path, backend: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    index.token = canary
    secret = tmp_path / "index-token"
    secret.write_text(canary)
    namespace = unique_namespace()
    write_config(project, testbed, namespace, backend=backend,
                 extra=f'[secrets.index_token]\nfile = "{secret}"\n')
    host, port = index.server_address[:2]
    project.layer("base", 'from = "upstream:seed"\n')
    project.layer("fetch", 'from = "base"\nsecrets = ["index_token"]\n', f"""
ARG BASE_IMAGE
FROM ${{BASE_IMAGE}}
RUN --mount=type=secret,id=index_token,uid=1000 \\
    wget -q -O /tmp/pkg.txt --header "Authorization: Bearer $(cat /run/secrets/index_token)" \\
        http://{host}:{port}/pkg.txt && cat /tmp/pkg.txt
USER 1000
""")
    proc = project.cli("build", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert index.hits == ["ok"]
    report = json.loads(proc.stdout)
    digest = next(e["digest"] for e in report["layers"] if e["layer"] == "fetch")
    image_dir = tmp_path / "image"
    subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false",
                    f"docker://{testbed.registry}/{namespace}/fetch@{digest}",
                    f"dir:{image_dir}"], check=True)
    needle = canary.encode()
    assert everything_contains(image_dir, needle) == []  # layers, history, labels
    assert everything_contains(project.root / "state", needle) == []  # state DB, logs
    assert needle not in proc.stdout.encode() + proc.stderr.encode()  # events, report
    assert secret.read_text() == canary  # the file itself is untouched

    # Rotating the secret is not a change of inputs: nothing rebuilds.
    secret.write_text(f"rotated-{uuid.uuid4().hex}")
    again = project.cli("build", "--json")
    assert again.returncode == 0
    assert {e["outcome"] for e in json.loads(again.stdout)["layers"]} == {"reused"}

    # A layer asking for a secret nobody defined is bad input, named.
    (project.layers / "fetch" / "layer.toml").write_text('from = "base"\nsecrets = ["nope"]\n')
    bad = project.cli("plan")
    assert bad.returncode == 2 and "secrets: 'nope' is not defined" in bad.stderr
