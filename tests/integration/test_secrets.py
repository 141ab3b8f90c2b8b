"""Build secrets on both engines: a layer authenticates to a loopback package index
with a secret; the canary value is nowhere afterwards (image layers, history,
labels, logs, state, events), and rotating it rebuilds nothing.

A git upstream's remote with ``user:token@`` (and a source URL with one): the
daemon polls it with the token, builds with the remote's URL, and the token
is nowhere afterwards either: the ``/v1/events`` stream, the daemon's log,
status, layers, history and explain answers, the image (labels, history,
layers), the provenance statement and SBOM in the registry, the state."""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import subprocess
import threading
import time
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Project, Testbed, manifest_digest, unique_namespace
from tests.integration.daemon_helpers import DaemonProcess, UnixHTTPConnection, api
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


# --- a git remote's credential --------------------------------------------------------------


class GitOverHttp(SimpleHTTPRequestHandler):
    """git's dumb HTTP protocol from a folder of bare repositories, behind Basic auth."""

    password = ""

    def do_GET(self) -> None:
        wanted = "Basic " + base64.b64encode(f"ci:{self.password}".encode()).decode()
        if self.headers.get("Authorization") != wanted:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.path = self.path.split("?", 1)[0]
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def git_remote(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(http://host:port, password) of a remote holding tool.git with tag v1.0.0."""
    work, served = tmp_path / "tool-work", tmp_path / "served"
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
           "PATH": "/usr/bin:/bin"}
    for argv in (["git", "init", "-q", str(work)],
                 ["git", "-C", str(work), "commit", "-q", "--allow-empty", "-m", "one"],
                 ["git", "-C", str(work), "tag", "v1.0.0"],
                 ["git", "clone", "-q", "--bare", str(work), str(served / "tool.git")],
                 ["git", "-C", str(served / "tool.git"), "update-server-info"]):
        subprocess.run(argv, check=True, env=env)
    password = f"canary-{uuid.uuid4().hex}"
    handler = type("Handler", (GitOverHttp,), {"password": password})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", password
    server.shutdown()
    server.server_close()


def registry_get(registry: str, path: str, accept: str) -> bytes:
    request = urllib.request.Request(f"http://{registry}/v2/{path}", headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return bytes(resp.read())


def registry_papers(registry: str, repository: str, digest: str) -> list[bytes]:
    """Every artifact attached to the image (manifest and document), DSSE payloads opened."""
    index = json.loads(registry_get(registry, f"{repository}/manifests/"
                                    + digest.replace(":", "-"),
                                    "application/vnd.oci.image.index.v1+json"))
    out = []
    for entry in index["manifests"]:
        manifest = registry_get(registry, f"{repository}/manifests/{entry['digest']}",
                                "application/vnd.oci.image.manifest.v1+json")
        blob = registry_get(registry, f"{repository}/blobs/"
                            f"{json.loads(manifest)['layers'][0]['digest']}", "*/*")
        out += [manifest, blob]
        with contextlib.suppress(ValueError, KeyError, TypeError):
            out.append(base64.b64decode(json.loads(blob)["payload"]))
    return out


def follow_events(sock: Path, until: set[str], then: Callable[[], object],
                  timeout: float = 120) -> list[str]:
    """Raw NDJSON lines of ``GET /v1/events``, following from before ``then`` is
    called, until each of ``until`` ("event", "event:upstream" or "event:layer")
    was seen."""
    conn = UnixHTTPConnection(sock, timeout=timeout)
    conn.request("GET", "/v1/events")
    stream = conn.getresponse()
    time.sleep(0.2)  # the stream's headers go out just before it subscribes
    then()
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    waiting = set(until)
    try:
        while waiting and time.monotonic() < deadline:
            line = stream.readline().decode()
            if not line:
                break
            lines.append(line)
            record = json.loads(line)
            waiting -= {record["event"], f"{record['event']}:{record.get('upstream')}",
                        f"{record['event']}:{record.get('layer')}"}
    finally:
        conn.close()
    assert not waiting, f"never saw {waiting} in:\n{''.join(lines)}"
    return lines


@pytest.mark.timeout(600)
def test_a_remote_credential_is_found_nowhere(project: Project, testbed: Testbed,
                                              git_remote: tuple[str, str],
                                              tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    remote, canary = git_remote
    with_token = remote.replace("http://", f"http://ci:{canary}@")
    key = tmp_path / "signing.pem"
    key.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    namespace = unique_namespace()
    project.write_config(f"""
        [catalog]
        layers = "layers"
        [registry]
        url = "{testbed.registry}/{namespace}"
        tls_verify = false
        [build]
        backend = "buildah"
        source = "https://ci:{canary}@git.example/platform/images"
        [state]
        dir = "state"
        [control]
        socket = "control.sock"
        [daemon]
        debounce = "300ms"
        drain_timeout = "30s"
        [provenance]
        key = "{key}"
        [upstream.seed]
        image = "{testbed.seed_image}"
        tag = "{testbed.seed_tag}"
        tls_verify = false
        [upstream.tool]
        git = "{with_token}/tool.git"
        track = "semver"
        [upstream.gone]
        git = "{with_token}/gone.git"
        track = "semver"
        poll = "1s"
    """)
    project.layer("base", """
        from = "upstream:seed"
        tags = ["1"]
        [args]
        TOOL_URL = "{upstream.tool.url}"
        TOOL_TAG = "{upstream.tool.tag}"
    """, "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nARG TOOL_URL\nARG TOOL_TAG\n"
         'RUN echo "$TOOL_URL $TOOL_TAG" > /tmp/tool.txt\nUSER 1000\n')
    # Stands on an upstream that never resolves: its failure is in status and history.
    project.layer("stuck", 'from = "base"\n[args]\nGONE = "{upstream.gone.tag}"\n')

    daemon = DaemonProcess(project).ready()
    answers: list[str] = []
    try:
        answers += follow_events(
            daemon.socket, {"upstream_check_failed:gone", "build_finished:base", "attested"},
            lambda: api(daemon.socket, "POST", "/v1/builds", {"layers": ["base"],
                                                              "force": True}))
        daemon.idle()
        image = f"{testbed.registry}/{namespace}/base:1"
        for path in ("/v1/status", "/v1/layers", "/v1/builds?limit=100",
                     f"/v1/images/{image}/explain"):
            status, body = api(daemon.socket, "GET", path)
            assert status == 200, (path, body)
            answers.append(json.dumps(body))
        status_body: dict[str, Any] = api(daemon.socket, "GET", "/v1/status")[1]
    finally:
        daemon.stop()
    answers.append(daemon.log_path.read_text())
    plan = project.cli("plan", "--json")
    explain = project.cli("explain", image, "--json")
    assert explain.returncode == 0, explain.stderr
    answers += [plan.stdout, plan.stderr, explain.stdout, explain.stderr]

    for text in answers:  # the event stream first, then status, layers, builds, explain
        assert canary not in text, text[:3000]
    # It was used: the poll authenticated, the build got the remote's URL without it.
    assert "upstream_check_failed" in "".join(answers) and "gone.git" in "".join(answers)
    assert "gone" in json.dumps(status_body)
    chain = json.loads(explain.stdout)
    assert chain[0]["upstreams"]["tool"]["uri"] == f"{remote}/tool.git#refs/tags/v1.0.0"

    digest = manifest_digest(testbed.registry, f"{namespace}/base", "1")
    assert digest is not None
    image_dir = tmp_path / "image"
    subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false",
                    f"docker://{testbed.registry}/{namespace}/base@{digest}",
                    f"dir:{image_dir}"], check=True)
    needle = canary.encode()
    assert everything_contains(image_dir, needle) == []  # layers, history, labels
    config = next(json.loads(p.read_bytes()) for p in image_dir.iterdir()
                  if b'"Labels"' in p.read_bytes()[:1 << 20])
    assert config["config"]["Labels"]["org.opencontainers.image.source"] == \
        "https://git.example/platform/images"
    assert any(f"TOOL_URL={remote}/tool.git" in h.get("created_by", "")
               for h in config.get("history", [])), config.get("history")
    papers = registry_papers(testbed.registry, f"{namespace}/base", digest)
    assert len(papers) >= 5  # statement (manifest, envelope, payload) and SBOM
    assert [p for p in papers if needle in p] == []
    assert any(f"{remote}/tool.git#refs/tags/v1.0.0".encode() in p for p in papers)
    assert everything_contains(project.root / "state", needle) == []  # state DB, build logs
