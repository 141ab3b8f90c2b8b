"""Acceptance: a real hierarchy built by real buildah and BuildKit into a real registry."""

from __future__ import annotations

import pytest

from tests.conftest import (
    Project,
    Testbed,
    built,
    image_config,
    manifest_digest,
    outcomes,
    unique_namespace,
)
from tests.integration.hierarchy import ALL, write_config, write_layers

pytestmark = pytest.mark.integration

PARENT = {"tools": "base", "runtime:1": "tools", "runtime:2": "tools",
          "framework": "runtime:1", "app": "framework", "other": "base", "other-app": "other"}


@pytest.mark.parametrize("backend", ["buildah", "buildkit"])
def test_hierarchy_builds_reuses_and_rebuilds_exactly_what_changed(
    project: Project, testbed: Testbed, backend: str
) -> None:
    namespace = unique_namespace()
    write_config(project, testbed, namespace, backend)
    write_layers(project)

    # Cold build: every layer built, each child on its parent's pushed digest.
    rc, report, err = project.cli_json("build")
    assert rc == 0, err
    assert built(report) == ALL
    by_layer = {entry["layer"]: entry for entry in report["layers"]}
    seed_digest = report["upstreams"]["seed"]["digest"]
    for layer, entry in by_layer.items():
        repository = f"{namespace}/{layer.split(':')[0]}"
        # The build-key tag marks the image; it points at the reported digest.
        assert manifest_digest(testbed.registry, repository, "bk-" + entry["build_key"]) \
            == entry["digest"]
        labels = image_config(testbed.registry, repository, entry["digest"])["config"]["Labels"]
        expected_base = by_layer[PARENT[layer]]["digest"] if layer in PARENT else seed_digest
        assert labels["org.opencontainers.image.base.digest"] == expected_base, layer
        assert labels["dev.orchestrator.build-key"] == entry["build_key"]
        for name in ("title", "version", "created", "source", "base.name"):
            assert labels[f"org.opencontainers.image.{name}"], name
    # Human tags are pushed too.
    assert manifest_digest(testbed.registry, f"{namespace}/runtime", "2") \
        == by_layer["runtime:2"]["digest"]

    # Nothing changed: nothing built.
    rc, report, err = project.cli_json("build")
    assert rc == 0, err
    assert built(report) == set()
    assert set(outcomes(report).values()) == {"reused"}

    # One file of a middle layer: that layer and its descendants, nothing else.
    first_framework = by_layer["framework"]["digest"]
    (project.layers / "framework" / "requirements.txt").write_text("flask==3.1.0\n")
    rc, plan, err = project.cli_json("plan")
    assert rc == 0, err
    reasons = {e["layer"]: (e["reason"], e["detail"]) for e in plan["layers"] if e["build"]}
    assert reasons == {"framework": ("context_changed", "requirements.txt"),
                       "app": ("parent_rebuilt", "")}
    rc, report, err = project.cli_json("build")
    assert rc == 0, err
    assert built(report) == {"framework", "app"}

    assert manifest_digest(testbed.registry, f"{namespace}/framework", "3") != first_framework

    # A revert needs no build: the old image is reused and its tag points at it again.
    (project.layers / "framework" / "requirements.txt").write_text("flask==3.0.3\n")
    rc, report, err = project.cli_json("build")
    assert rc == 0 and built(report) == set(), err
    assert manifest_digest(testbed.registry, f"{namespace}/framework", "3") == first_framework
    (project.layers / "framework" / "requirements.txt").write_text("flask==3.1.0\n")
    rc, report, err = project.cli_json("build")
    assert rc == 0 and built(report) == set(), err

    # An ignored file changes nothing.
    (project.layers / "tools" / "notes.tmp").write_text("still ignored\n")
    rc, report, err = project.cli_json("build")
    assert rc == 0 and built(report) == set(), err

    # --force on a layer rebuilds it; its descendants follow by key. buildah
    # rebuilds unchanged inputs to the same digest, so the cascade stops there;
    # Docker 20.10's BuildKit stamps a new time, so it goes on.
    rc, report, err = project.cli_json("build", "runtime:1", "--force")
    assert rc == 0, err
    assert built(report) == ({"runtime:1"} if backend == "buildah"
                             else {"runtime:1", "framework", "app"})
