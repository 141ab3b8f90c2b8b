"""Running all year: a few dozen builds keep the registry's key tags and the local
store within their bounds, reuse still works for what is kept, and gc never
touches a tagged image or one the hierarchy stands on."""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest

from tests.conftest import Project, Testbed, unique_namespace
from tests.integration.hierarchy import write_config

pytestmark = [pytest.mark.integration, pytest.mark.long(1.2)]
BUILDS = 12  # four times the bounds below: enough to show they hold


def tags(registry: str, repository: str) -> list[str]:
    with urllib.request.urlopen(f"http://{registry}/v2/{repository}/tags/list",
                                timeout=30) as resp:
        return list(json.load(resp).get("tags") or [])


def local_images(repository: str) -> int:
    out = subprocess.run(["buildah", "images", "--json", "--filter",
                          "label=dev.orchestrator.layer=app"], capture_output=True, text=True)
    images = json.loads(out.stdout or "[]") or []
    return sum(any(n.startswith(repository) for n in i.get("names") or []) for i in images)


@pytest.mark.timeout(900)
def test_a_long_run_stays_bounded(project: Project, testbed: Testbed) -> None:
    namespace = unique_namespace()
    write_config(project, testbed, namespace)
    config = project.config.read_text().replace("tls_verify = false\n",
                                                "tls_verify = false\nkeep = 3\n", 1)
    project.config.write_text(config.replace('timeout = "10m"',
                                             'timeout = "10m"\nkeep_local = 2'))
    project.layer("base", 'from = "upstream:seed"\ntags = ["1"]\n')
    project.layer("app", 'from = "base"\ntags = ["1"]\n',
                  "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY data.txt /tmp/data.txt\n",
                  files={"data.txt": "v0\n"})
    data = project.layers / "app" / "data.txt"
    repository = f"{testbed.registry}/{namespace}/app"
    most_key_tags = most_local = 0
    for i in range(BUILDS):
        data.write_text(f"v{i}\n")
        proc = project.cli("build", "--json")
        assert proc.returncode == 0, proc.stderr[-2000:]
        # bk-<key> (complete), not bk-<key>-<platform> (the engine's push before it)
        keys = [t for t in tags(testbed.registry, f"{namespace}/app")
                if t.startswith("bk-") and len(t) == len("bk-") + 64]
        most_key_tags = max(most_key_tags, len(keys))
        most_local = max(most_local, local_images(repository))
    print(f"{BUILDS} builds of app: at most {most_key_tags} key tags in the registry "
          f"(keep = 3), at most {most_local} images in buildah's store (keep_local = 2)")
    assert most_key_tags <= 3
    assert most_local <= 2
    # The base was built once and is what app stands on: never deleted.
    assert len([t for t in tags(testbed.registry, f"{namespace}/base")
                if t.startswith("bk-") and len(t) == len("bk-") + 64]) == 1

    # What is kept is reused; what went is rebuilt.
    data.write_text(f"v{BUILDS - 2}\n")
    kept = json.loads(project.cli("build", "--json").stdout)
    assert {e["layer"]: e["outcome"] for e in kept["layers"]}["app"] == "reused"
    data.write_text("v0\n")
    gone = json.loads(project.cli("build", "--json").stdout)
    assert {e["layer"]: e["outcome"] for e in gone["layers"]}["app"] == "built"

    # gc on demand: a dry run lists, deletes nothing; keeps what a tag names.
    dry = project.cli("gc", "--dry-run")
    assert dry.returncode == 0 and "to delete" in dry.stdout
    assert "a human tag points at it" in dry.stdout or "among the newest" in dry.stdout
