"""Every image a build uses is pinned and in the key, end to end on the real engines."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import Project, Testbed, built, image_config, unique_namespace
from tests.integration.hierarchy import write_config

pytestmark = pytest.mark.integration


def _copy(src: str, dest: str) -> None:
    subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false",
                    f"docker://{src}", f"docker://{dest}"], check=True)


def _labelled(src: str, local: str, label: str, push_as: str | None = None) -> None:
    """``src`` with one more label, committed as ``local`` (this host's buildah store)
    and pushed as ``push_as`` (default: ``local``)."""
    ctr = subprocess.run(["buildah", "from", "--tls-verify=false", src], check=True,
                         capture_output=True, text=True).stdout.strip()
    try:
        subprocess.run(["buildah", "config", "--label", label, ctr], check=True)
        subprocess.run(["buildah", "commit", "-q", ctr, local], check=True, capture_output=True)
        subprocess.run(["buildah", "push", "-q", "--tls-verify=false", local,
                        f"docker://{push_as or local}"], check=True)
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True, check=False)


def _forget(*names: str) -> None:
    for name in names:
        subprocess.run(["buildah", "rmi", "--force", name], capture_output=True, check=False)


@pytest.mark.parametrize("backend", ["buildah", "buildkit"])
def test_a_base_image_dockerfiles_other_image_is_in_the_key(
        project: Project, testbed: Testbed, backend: str) -> None:
    """Regression: in a ${BASE_IMAGE} Dockerfile, COPY --from=REGISTRY/other:1 with an
    upstream watching that image was neither pinned nor in the key: after a new
    other:1 was pushed, the layer still planned "up to date"."""
    namespace = unique_namespace()
    other = f"{testbed.registry}/{namespace}/other"
    seed = f"{testbed.seed_image}:{testbed.seed_tag}"
    _copy(seed, f"{other}:1")
    write_config(project, testbed, namespace, backend, extra=f"""
        [upstream.other]
        image = "{other}"
        tag = "1"
        tls_verify = false
    """)
    project.layer("app", 'from = "upstream:seed"\n',
                  f"ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}}\n"
                  f"COPY --from={other}:1 /bin/busybox /other-busybox\nUSER 1000\n")
    try:
        rc, report, err = project.cli_json("build")
        assert rc == 0, err
        assert built(report) == {"app"}
        rc, plan, err = project.cli_json("plan")
        assert rc == 0 and not plan["layers"][0]["build"], (err, plan)

        _labelled(seed, f"{other}:1", "moved=1")  # other:1 moves
        rc, plan, err = project.cli_json("plan")
        assert rc == 0, err
        app = plan["layers"][0]
        assert app["build"] and app["reason"] == "upstream_changed", app
    finally:
        _forget(f"{other}:1")


def test_a_from_filled_from_an_upstream_builds_on_the_pinned_digest(
        project: Project, testbed: Testbed) -> None:
    """Regression: FROM py:${PY} with PY = "{upstream.py.tag}" was pinned under the
    ARG default's name; the engine, given PY=1.1.0, found no pin for its FROM and
    used a stale local py:1.1.0 under a key that claimed the registry's digest.
    (Docker's BuildKit uses a local image of that name without asking the registry.)"""
    namespace = unique_namespace()
    py = f"{testbed.registry}/{namespace}/py"
    seed = f"{testbed.seed_image}:{testbed.seed_tag}"
    docker = ["docker", "-H", testbed.docker_host]
    _copy(seed, f"{py}:1.0.0")
    _labelled(seed, f"{py}:1.1.0", "py=old")
    # The engine's host keeps the old py:1.1.0; the registry's is newer.
    subprocess.run([*docker, "pull", "-q", f"{py}:1.1.0"], check=True, capture_output=True)
    _labelled(seed, f"{py}-new:1", "py=new", push_as=f"{py}:1.1.0")
    write_config(project, testbed, namespace, "buildkit", extra=f"""
        [upstream.py]
        image = "{py}"
        track = "semver"
        tls_verify = false
    """)
    project.layer("app", 'from = "upstream:py"\n[args]\nPY = "{upstream.py.tag}"\n',
                  f"ARG PY=1.0.0\nFROM {py}:${{PY}}\nUSER 1000\n")
    try:
        rc, report, err = project.cli_json("build")
        assert rc == 0, err
        assert report["upstreams"]["py"]["tag"] == "1.1.0"
        entry = report["layers"][0]
        labels = image_config(testbed.registry, f"{namespace}/app", entry["digest"])[
            "config"]["Labels"]
        assert labels["py"] == "new"
    finally:
        _forget(f"{py}:1.1.0", f"{py}-new:1")
        subprocess.run([*docker, "rmi", "--force", f"{py}:1.1.0"], capture_output=True,
                       check=False)
