"""What each engine receives from a build's snapshot is exactly the file set the
build key was made from: the engines must not apply an ignore file a second
time, whichever ignore file chose the set. Real buildah and BuildKit."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from orchestrator.build.runs import load
from orchestrator.catalog.context import read_context
from tests.conftest import Project, Testbed, unique_namespace
from tests.integration.hierarchy import write_config

pytestmark = pytest.mark.integration


def top_layer_paths(registry: str, repository: str, digest: str, workdir: Path,
                    under: str) -> set[str]:
    """Files, links and directories (with a trailing /) in the image's top layer,
    below ``under``, as the engine wrote them."""
    dest = workdir / digest.replace(":", "-")
    subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false",
                    f"docker://{registry}/{repository}@{digest}", f"dir:{dest}"], check=True)
    manifest = json.loads((dest / "manifest.json").read_text())
    top = manifest["layers"][-1]["digest"].split(":", 1)[1]
    found = set()
    with tarfile.open(dest / top) as tar:
        for member in tar.getmembers():
            name = member.name.lstrip("./").removeprefix(under)
            if member.name.lstrip("./").startswith(under) and name:
                found.add(name + "/" if member.isdir() else name)
    return found


FILES = {"README.md": "read me\n", "secret.txt": "not for the image\n", "keep.txt": "kept\n",
         "sub/notes.md": "notes\n", "sub/data.txt": "data\n",
         # Both engines read the Dockerfile's own ignore file first: it chose the
         # keyed set, and the context's .dockerignore must not apply on top.
         ".dockerignore": "*.md\nsub/*.md\n", "Dockerfile.dockerignore": "secret.txt\n"}


@pytest.mark.parametrize("backend", ["buildah", "buildkit"])
def test_the_engine_receives_exactly_the_keyed_set(project: Project, testbed: Testbed,
                                                    tmp_path: Path, backend: str) -> None:
    namespace = unique_namespace()
    # "seedbox:1" is how a Dockerfile may name the seed (a mirror's public name).
    write_config(project, testbed, namespace, backend=backend, extra='names = ["seedbox:1"]')
    # One layer through BASE_IMAGE, one naming its parent literally (Docker gets a
    # pinned copy of that Dockerfile, elsewhere: the same must hold there).
    project.layer("app", 'from = "upstream:seed"\n',
                  "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY . /ctx/\nUSER 1000\n", files=FILES)
    project.layer("lit", 'from = "upstream:seed"\n', "FROM seedbox:1\nCOPY . /ctx/\nUSER 1000\n",
                  files=FILES)
    for name in ("app", "lit"):
        (project.layers / name / "empty").mkdir()
    build = project.cli("build", "--json")
    assert build.returncode == 0, build.stderr[-3000:]
    digests = {e["layer"]: e["digest"] for e in json.loads(build.stdout)["layers"]}

    _, catalog = load(project.config)
    for name in ("app", "lit"):
        keyed = {e.path for e in read_context(catalog.layers[name], (backend,)).files}
        assert {"README.md", "sub/notes.md", "empty/"} <= keyed and "secret.txt" not in keyed
        received = top_layer_paths(testbed.registry, f"{namespace}/{name}", digests[name],
                                   tmp_path, "ctx/")
        assert received == keyed, name
