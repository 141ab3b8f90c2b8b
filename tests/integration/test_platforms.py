"""One hierarchy, two platforms: every layer's tag is an index of linux/amd64 and
linux/arm64, each platform built FROM its parent's image for that platform;
the arm64 image runs (under QEMU) and says aarch64."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from typing import Any

import pytest

from tests.conftest import Project, Testbed, _testbed_settings, unique_namespace

pytestmark = pytest.mark.integration
BOTH = ["linux/amd64", "linux/arm64"]
INDEX_ACCEPT = ("application/vnd.oci.image.index.v1+json, "
                "application/vnd.docker.distribution.manifest.list.v2+json, "
                "application/vnd.oci.image.manifest.v1+json, "
                "application/vnd.docker.distribution.manifest.v2+json")


def get(registry: str, path: str, accept: str = INDEX_ACCEPT) -> Any:
    request = urllib.request.Request(f"http://{registry}/v2/{path}", headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.load(resp)


def per_platform(registry: str, repository: str, reference: str) -> dict[str, str]:
    index = get(registry, f"{repository}/manifests/{reference}")
    assert "manifests" in index, f"{repository}:{reference} is not an index"
    return {f"{m['platform']['os']}/{m['platform']['architecture']}": m["digest"]
            for m in index["manifests"]}


def labels(registry: str, repository: str, digest: str) -> dict[str, str]:
    manifest = get(registry, f"{repository}/manifests/{digest}")
    config = get(registry, f"{repository}/blobs/{manifest['config']['digest']}")
    return dict(config["config"]["Labels"])


def configure(project: Project, testbed: Testbed, namespace: str, backend: str) -> None:
    multi = _testbed_settings().get("ORCH_TEST_MULTI_IMAGE")
    if not multi:
        pytest.fail("the test bed has no multi-platform seed (scripts/testbed up)")
    project.write_config(f"""
        [catalog]
        layers = "layers"
        [registry]
        url = "{testbed.registry}/{namespace}"
        tls_verify = false
        [build]
        backend = "{backend}"
        platforms = ["linux/amd64", "linux/arm64"]
        [build.buildkit]
        docker_host = "{testbed.docker_host}"
        [state]
        dir = "state"
        [provenance]
        sbom = false
        [upstream.seed]
        image = "{multi}"
        tag = "1"
        tls_verify = false
    """)


@pytest.mark.parametrize("backend", ["buildah", "buildkit"])
@pytest.mark.timeout(900)
def test_two_platforms_under_one_tag(project: Project, testbed: Testbed, backend: str) -> None:
    namespace = unique_namespace()
    configure(project, testbed, namespace, backend)
    project.layer("base", 'from = "upstream:seed"\ntags = ["1"]\n',
                  "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN uname -m > /tmp/arch\nUSER 1000\n")
    project.layer("tools", 'from = "base"\ntags = ["1"]\n',
                  "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY tool.sh /tmp/tool.sh\n",
                  files={"tool.sh": "echo v1\n"})
    project.layer("app", 'from = "tools"\ntags = ["1"]\n')
    code, report, err = project.cli_json("build")
    assert code == 0, err[-3000:]
    assert {e["outcome"] for e in report["layers"]} == {"built"}
    seed = per_platform(testbed.registry, _testbed_settings()["ORCH_TEST_MULTI_IMAGE"]
                       .split("/", 1)[1], "1")
    parents = {"base": seed}
    for layer, parent in (("base", None), ("tools", "base"), ("app", "tools")):
        platforms = per_platform(testbed.registry, f"{namespace}/{layer}", "1")
        assert sorted(platforms) == BOTH, layer
        if parent is not None:
            parents[layer] = per_platform(testbed.registry, f"{namespace}/{parent}", "1")
        for platform, digest in platforms.items():
            # Each platform's image stands on the parent's image for that platform.
            assert labels(testbed.registry, f"{namespace}/{layer}", digest)[
                "org.opencontainers.image.base.digest"] == parents[layer][platform]
    app = per_platform(testbed.registry, f"{namespace}/app", "1")
    env = {**os.environ, "DOCKER_HOST": testbed.docker_host}
    for platform, machine in (("linux/arm64", "aarch64"), ("linux/amd64", "x86_64")):
        ran = subprocess.run(["/usr/bin/docker", "run", "--rm",
                              f"{testbed.registry}/{namespace}/app@{app[platform]}",
                              "uname", "-m"], capture_output=True, text=True, env=env,
                             timeout=300)
        assert ran.stdout.strip() == machine, ran.stderr
        arch = subprocess.run(["/usr/bin/docker", "run", "--rm",
                               f"{testbed.registry}/{namespace}/app@{app[platform]}",
                               "cat", "/tmp/arch"], capture_output=True, text=True, env=env,
                              timeout=300)
        assert arch.stdout.strip() == machine  # the RUN step ran as that platform, too

    # Papers are per platform; explain follows this host's platform down the chain.
    explained = project.cli("explain", f"{testbed.registry}/{namespace}/app:1", "--json")
    assert explained.returncode == 0, explained.stderr
    chain = json.loads(explained.stdout)
    assert [level["layer"] for level in chain] == ["app", "tools", "base", None]
    assert chain[0]["image"].endswith(app["linux/amd64"])

    again = project.cli_json("build")[1]
    assert {e["outcome"] for e in again["layers"]} == {"reused"}
    (project.layers / "tools" / "tool.sh").write_text("echo v2\n")
    code, edited, err = project.cli_json("build")
    assert code == 0, err[-3000:]
    assert {e["layer"]: e["outcome"] for e in edited["layers"]} == {
        "base": "reused", "tools": "built", "app": "built"}
    assert sorted(per_platform(testbed.registry, f"{namespace}/app", "1")) == BOTH

    # A leaf on one platform, then on both: only the leaf builds again.
    project.layer("leaf", 'from = "app"\ntags = ["1"]\nplatforms = ["linux/amd64"]\n')
    code, first, err = project.cli_json("build")
    assert code == 0, err[-3000:]
    assert {e["layer"] for e in first["layers"] if e["outcome"] == "built"} == {"leaf"}
    (project.layers / "leaf" / "layer.toml").write_text(
        'from = "app"\ntags = ["1"]\nplatforms = ["linux/amd64", "linux/arm64"]\n')
    plan = project.cli("plan")
    assert "leaf" in plan.stdout and "platforms changed: +linux/arm64" in plan.stdout
    code, widened, err = project.cli_json("build")
    assert code == 0, err[-3000:]
    assert {e["layer"] for e in widened["layers"] if e["outcome"] == "built"} == {"leaf"}
    assert sorted(per_platform(testbed.registry, f"{namespace}/leaf", "1")) == BOTH


def test_a_platform_the_parent_lacks_is_named(project: Project, testbed: Testbed) -> None:
    configure(project, testbed, unique_namespace(), "buildah")
    project.layer("base", 'from = "upstream:seed"\nplatforms = ["linux/amd64"]\n')
    project.layer("child", 'from = "base"\nplatforms = ["linux/arm64"]\n')
    proc = project.cli("plan")
    assert proc.returncode == 2
    assert "linux/arm64 is not built by its parent base" in proc.stderr
