"""Adoption on real engines: a tree in the style of the official-images repositories
goes through init -> graph -> build with no file edited; every child's base.digest
is its parent's pushed digest; editing the middle Dockerfile rebuilds it and what
stands on it, nothing else."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Testbed, image_config, unique_namespace

pytestmark = pytest.mark.integration

HEADER = """#
# NOTE: THIS DOCKERFILE IS GENERATED VIA "apply-templates.sh"
#
# PLEASE DO NOT EDIT IT DIRECTLY.
#
"""
TREE = {
    "buildpack-deps/1.36/curl/Dockerfile": HEADER + """
FROM busybox:1.36

RUN set -eux; \\
\tmkdir -p /opt/curl; \\
\techo curl > /opt/curl/marker
USER 1000
""",
    "buildpack-deps/1.36/scm/Dockerfile": HEADER + """
FROM buildpack-deps:1.36-curl

RUN set -eux; \\
\techo scm > /tmp/scm
""",
    "buildpack-deps/1.36/Dockerfile": HEADER + """
FROM buildpack-deps:1.36-scm

RUN echo full > /tmp/full
""",
    # A multi-stage file: the builder stage stands on an image nothing watches.
    "app/Dockerfile": """ARG SEED=127.0.0.1:5000/seed/debian:bookworm
FROM ${SEED} AS build
RUN echo built-in-a-builder-stage > /tmp/artifact

FROM buildpack-deps:1.36
COPY --from=build /tmp/artifact /tmp/artifact
USER 1000
""",
}


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def cli(config: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    prefix = ["-c", str(config)] if config is not None else []
    return subprocess.run([sys.executable, "-m", "orchestrator", *prefix, *args],
                          capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("backend", ["buildah", "buildkit"])
def test_an_existing_tree_is_adopted_and_built_as_it_is(tmp_path: Path, testbed: Testbed,
                                                       backend: str) -> None:
    repo = tmp_path / "images"
    for rel, text in TREE.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    untouched = tree_digest(repo)
    out = tmp_path / "catalog"
    init = cli(None, "init", str(repo), "--out", str(out))
    assert init.returncode == 0, init.stderr
    config = out / "config.toml"
    text = config.read_text()
    # The host pulls busybox from its mirror: the upstream keeps the name the
    # Dockerfiles use (names = […]) and points at the mirror.
    text = re.sub(r'image = "docker.io/library/busybox"\ntag = "1.36"',
                  f'image = "{testbed.seed_image}"\ntag = "{testbed.seed_tag}"\n'
                  'tls_verify = false', text)
    # init watches every base it finds; drop the builder stage's one, as a
    # hand-written catalog might: it is then an unwatched base, still pinned.
    text = re.sub(r"\[upstream\.debian\]\n(?:(?!\[).*\n?)*", "", text)
    namespace = unique_namespace()
    text += (f'\n[registry]\nurl = "{testbed.registry}/{namespace}"\ntls_verify = false\n'
             f'[build]\nbackend = "{backend}"\n[build.buildkit]\n'
             f'docker_host = "{testbed.docker_host}"\n[state]\ndir = "state"\n')
    config.write_text(text)

    graph = cli(config, "graph")
    assert graph.returncode == 0, graph.stderr
    assert graph.stdout.split() == [
        "buildpack-deps-1.36-curl", "(from", "upstream:busybox)", "└──",
        "buildpack-deps-1.36-scm", "└──", "buildpack-deps-1.36", "└──", "app"], graph.stdout
    lint = cli(config, "lint")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "unwatched-base" in lint.stdout and "seed/debian:bookworm" in lint.stdout

    build = cli(config, "build", "--json")
    assert build.returncode == 0, build.stderr[-3000:]
    report = {e["layer"]: e for e in json.loads(build.stdout)["layers"]}
    assert {k for k, v in report.items() if v["outcome"] == "built"} == set(report)
    parents = {"buildpack-deps-1.36-scm": "buildpack-deps-1.36-curl",
               "buildpack-deps-1.36": "buildpack-deps-1.36-scm",
               "app": "buildpack-deps-1.36"}
    for child, parent in parents.items():
        image = "buildpack-deps" if child != "app" else "app"
        labels = image_config(testbed.registry, f"{namespace}/{image}",
                              report[child]["digest"])["config"]["Labels"]
        assert labels["org.opencontainers.image.base.digest"] == report[parent]["digest"]
    assert tree_digest(repo) == untouched  # nothing was rewritten

    again = cli(config, "build", "--json")
    assert again.returncode == 0
    assert {e["outcome"] for e in json.loads(again.stdout)["layers"]} == {"reused"}

    middle = repo / "buildpack-deps" / "1.36" / "scm" / "Dockerfile"
    middle.write_text(middle.read_text().replace("echo scm", "echo scm-v2"))
    edited = cli(config, "build", "--json")
    assert edited.returncode == 0, edited.stderr[-3000:]
    rebuilt = {e["layer"] for e in json.loads(edited.stdout)["layers"]
               if e["outcome"] == "built"}
    assert rebuilt == {"buildpack-deps-1.36-scm", "buildpack-deps-1.36", "app"}


def test_an_official_images_checkout_is_adopted_by_its_folder_tails(
        tmp_path: Path, testbed: Testbed) -> None:
    # docker-library's own layout: debian/<suite>/curl/Dockerfile is published as
    # buildpack-deps:<suite>-curl, which is how scm/ names it. Scanned at the checkout's
    # top, as a user adopting buildpack-deps would.
    repo = tmp_path / "buildpack-deps"
    for rel, text in TREE.items():
        if rel.startswith("buildpack-deps/"):
            path = repo / "debian" / rel.removeprefix("buildpack-deps/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    out = tmp_path / "catalog"
    init = cli(None, "init", str(repo), "--out", str(out))
    assert init.returncode == 0, init.stderr
    assert "not matched" not in init.stdout, init.stdout
    config = out / "config.toml"
    text = re.sub(r'image = "docker.io/library/busybox"\ntag = "1.36"',
                  f'image = "{testbed.seed_image}"\ntag = "{testbed.seed_tag}"\n'
                  'tls_verify = false', config.read_text())
    namespace = unique_namespace()
    config.write_text(text + f'\n[registry]\nurl = "{testbed.registry}/{namespace}"\n'
                      'tls_verify = false\n[build]\nbackend = "buildah"\n'
                      '[state]\ndir = "state"\n')
    graph = cli(config, "graph")
    assert graph.stdout.split() == [
        "buildpack-deps-1.36-curl", "(from", "upstream:busybox)", "└──",
        "buildpack-deps-1.36-scm", "└──", "buildpack-deps-1.36"], graph.stdout + graph.stderr
    build = cli(config, "build", "--json")
    assert build.returncode == 0, build.stderr[-3000:]
    report = {e["layer"]: e for e in json.loads(build.stdout)["layers"]}
    for child, parent in (("buildpack-deps-1.36-scm", "buildpack-deps-1.36-curl"),
                          ("buildpack-deps-1.36", "buildpack-deps-1.36-scm")):
        labels = image_config(testbed.registry, f"{namespace}/buildpack-deps",
                              report[child]["digest"])["config"]["Labels"]
        assert labels["org.opencontainers.image.base.digest"] == report[parent]["digest"]
