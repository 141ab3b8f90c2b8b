"""Shared fixtures: writing catalogs, running the CLI, reaching the test bed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTBED_ENV = ROOT / ".testbed" / "env"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first, longest ahead: the workers take files in this
    order, and a seven-minute file started last would run alone at the end."""
    def minutes(item: pytest.Item) -> float:
        marker = item.get_closest_marker("long")
        return float(marker.args[0]) if marker and marker.args else 0.0

    items.sort(key=minutes, reverse=True)  # stable: files stay whole, tests in order


@dataclass(frozen=True)
class Testbed:
    __test__ = False  # a fixture value, not a test class

    registry: str
    docker_host: str
    seed_image: str
    seed_tag: str
    auth_registry: str
    auth_file: str
    auth_password: str


def _testbed_settings() -> dict[str, str]:
    settings = {k: v for k, v in os.environ.items() if k.startswith("ORCH_TEST_")}
    if TESTBED_ENV.exists():
        for line in TESTBED_ENV.read_text().splitlines():
            key, _, value = line.partition("=")
            settings.setdefault(key, value)
    return settings


@pytest.fixture(scope="session")
def testbed() -> Testbed:
    s = _testbed_settings()
    if "ORCH_TEST_REGISTRY" not in s:
        message = "test bed not running: start it with `scripts/testbed up`"
        if os.environ.get("ORCH_REQUIRE_TESTBED"):
            pytest.fail(message)
        pytest.skip(message)
    return Testbed(
        registry=s["ORCH_TEST_REGISTRY"], docker_host=s["ORCH_TEST_DOCKER_HOST"],
        seed_image=s["ORCH_TEST_SEED_IMAGE"], seed_tag=s["ORCH_TEST_SEED_TAG"],
        auth_registry=s["ORCH_TEST_AUTH_REGISTRY"], auth_file=s["ORCH_TEST_AUTH_FILE"],
        auth_password=s["ORCH_TEST_AUTH_PASSWORD"],
    )


class Project:
    """A config.toml and layers/ folder in a temporary directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.layers = root / "layers"
        self.layers.mkdir(parents=True, exist_ok=True)
        self.config = root / "config.toml"

    def write_config(self, text: str) -> None:
        self.config.write_text(textwrap.dedent(text))

    def layer(self, name: str, layer_toml: str, dockerfile: str | None = None,
              files: Mapping[str, str] | None = None) -> Path:
        folder = self.layers / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "layer.toml").write_text(textwrap.dedent(layer_toml))
        if dockerfile is None:
            dockerfile = ("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n"
                          f"RUN echo {name} > /tmp/{name}.txt\nUSER 1000\n")
        (folder / "Dockerfile").write_text(textwrap.dedent(dockerfile))
        for rel, content in (files or {}).items():
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        return folder

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "orchestrator", "-c", str(self.config), *args],
            capture_output=True, text=True, timeout=timeout, cwd=self.root,
        )

    def cli_json(self, *args: str) -> tuple[int, dict[str, Any], str]:
        proc = self.cli(*args, "--json")
        try:
            data = json.loads(proc.stdout)
        except ValueError:
            raise AssertionError(f"not JSON (exit {proc.returncode}):\n{proc.stdout}\n"
                                 f"{proc.stderr}") from None
        return proc.returncode, data, proc.stderr


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    made = Project(tmp_path / "project")
    yield made
    _remove_scratch_of(made)


def _remove_scratch_of(project: Project) -> None:
    """What a test's killed daemon or CLI left in its tmpfs scratch folder
    (/dev/shm): pytest removes the state dir with tmp_path; this is outside it.
    (In service, the next start with that state dir clears it.)"""
    from orchestrator.build.snapshot import remove_tree, scratch_path
    from orchestrator.catalog.config import load_config
    from orchestrator.core.errors import OrchestratorError

    try:
        config = load_config(project.config)
    except (OrchestratorError, OSError):
        return
    folder = scratch_path(config.scratch, config.state_dir)
    if folder is not None and folder.is_dir() and not folder.is_symlink():
        remove_tree(folder)


@pytest.fixture(scope="session", autouse=True)
def no_scratch_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Sweep the scratch folders of this session's projects that no project
    fixture cleared (a test that wrote its own config). Only those: another
    test session on the same machine may be using its own right now."""
    yield
    base = tmp_path_factory.getbasetemp()
    for config in base.glob("**/config.toml"):
        _remove_scratch_of(Project(config.parent))


def unique_namespace() -> str:
    return "t" + uuid.uuid4().hex[:10]


def outcomes(report: dict[str, Any]) -> dict[str, str]:
    return {entry["layer"]: entry["outcome"] for entry in report["layers"]}


def built(report: dict[str, Any]) -> set[str]:
    return {layer for layer, outcome in outcomes(report).items() if outcome == "built"}


# -- reading images back from the registry ----------------------------------

_ACCEPT = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])


def image_config(registry: str, repository: str, reference: str) -> dict[str, Any]:
    """The image config blob (labels, user, …) straight from the registry API."""
    req = urllib.request.Request(f"http://{registry}/v2/{repository}/manifests/{reference}",
                                 headers={"Accept": _ACCEPT})
    with urllib.request.urlopen(req, timeout=30) as resp:
        manifest = json.load(resp)
    digest = manifest["config"]["digest"]
    with urllib.request.urlopen(f"http://{registry}/v2/{repository}/blobs/{digest}",
                                timeout=30) as resp:
        config: dict[str, Any] = json.load(resp)
    return config


def manifest_digest(registry: str, repository: str, reference: str) -> str | None:
    req = urllib.request.Request(f"http://{registry}/v2/{repository}/manifests/{reference}",
                                 method="HEAD", headers={"Accept": _ACCEPT})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.headers.get("Docker-Content-Digest")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
