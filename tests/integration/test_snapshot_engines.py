"""What each engine receives from a build's snapshot is exactly the file set the
build key was made from: the engines must not apply an ignore file a second
time, whichever ignore file chose the set. Real buildah and BuildKit."""

from __future__ import annotations

import asyncio
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from orchestrator.build.runs import execute, load
from orchestrator.catalog.context import read_context
from orchestrator.core.model import Outcome
from tests.conftest import Project, Testbed, unique_namespace
from tests.integration.hierarchy import write_config
from tests.swaps import ORIGINAL, SECRET, Tripwire, swap_back, swap_for_link

pytestmark = pytest.mark.integration


def top_layer_paths(registry: str, repository: str, digest: str, workdir: Path,
                    under: str) -> set[str]:
    """Files, links and directories (with a trailing /) in the image's top layer,
    below ``under``, as the engine wrote them."""
    return set(top_layer_files(registry, repository, digest, workdir, under))


def top_layer_files(registry: str, repository: str, digest: str, workdir: Path,
                    under: str) -> dict[str, bytes]:
    """top_layer_paths, each regular file with its bytes (b"" for the rest)."""
    dest = workdir / digest.replace(":", "-")
    subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false",
                    f"docker://{registry}/{repository}@{digest}", f"dir:{dest}"], check=True)
    manifest = json.loads((dest / "manifest.json").read_text())
    top = manifest["layers"][-1]["digest"].split(":", 1)[1]
    found = {}
    with tarfile.open(dest / top) as tar:
        for member in tar.getmembers():
            name = member.name.lstrip("./").removeprefix(under)
            if member.name.lstrip("./").startswith(under) and name:
                data = tar.extractfile(member) if member.isfile() else None
                found[name + "/" if member.isdir() else name] = data.read() if data else b""
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


def test_a_folder_swapped_for_a_link_mid_build_never_reaches_the_image(
        project: Project, testbed: Testbed, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The race of the hostile review, through the whole pipeline and real
    buildah: ``d1/d2`` is a link to an outside folder while the scan descends
    (a path-following scan would hash the outside file), the real folder again
    when the copy starts, and a link again right before the copy opens the file
    below it. Whatever the run does, the image holds no outside byte, and
    exactly the set its key was made from. In process, so the hooks can fire."""
    namespace = unique_namespace()
    write_config(project, testbed, namespace, backend="buildah")
    project.layer("app", 'from = "upstream:seed"\n',
                  "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY . /ctx/\nUSER 1000\n",
                  files={"d1/d2/file": ORIGINAL.decode(), "top.txt": "top\n"})
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "file").write_bytes(SECRET)
    target = project.layers / "app" / "d1" / "d2"
    watch = Tripwire(monkeypatch, outside)
    watch.after_listing("orchestrator.catalog", "d2", lambda: swap_for_link(target, outside))
    # The copy opens the Dockerfile first (sorted: "D" < "d"), then d1/d2/file.
    watch.before_open("orchestrator.build.snapshot", "Dockerfile", lambda: swap_back(target))
    watch.before_open("orchestrator.build.snapshot", "file",
                      lambda: swap_for_link(target, outside))
    config, catalog = load(project.config)
    report = asyncio.run(execute(config, catalog))
    monkeypatch.undo()  # the hooks off: the rest reads the registry
    assert watch.opened_outside == []
    result = report.results["app"]
    assert result.outcome is Outcome.BUILT and result.value is not None, result.error
    assert result.value.digest is not None
    received = top_layer_files(testbed.registry, f"{namespace}/app", result.value.digest,
                               tmp_path, "ctx/")
    assert SECRET not in received.values()
    # The key was made from what the scan could read inside the context (not
    # d1/d2: a link when it was reached), and the image holds exactly that.
    assert set(received) == {"Dockerfile", "d1/", "top.txt"}
    assert received["top.txt"] == b"top\n"
