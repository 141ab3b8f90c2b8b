"""Every image a build uses is pinned and in the key, worked out as the engine will
read the Dockerfile: with the build's args (upstream values filled in) and platform.

Upstreams are stood in for at the resolution seam; the builder only records what
it was asked to build.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import orchestrator.build.runs as runs
from orchestrator.cli.main import main
from orchestrator.core.model import BuilderSpec
from orchestrator.engines.base import BuildOutput, BuildRequest
from tests.conftest import Project
from tests.fakes import MemoryBuilder, fixed_upstreams

REG = "127.0.0.1:9"
SHA = {c: "sha256:" + c * 64 for c in "abcdef"}


class RecordingBuilder(MemoryBuilder):
    def __init__(self) -> None:
        super().__init__()
        self.requests: list[BuildRequest] = []

    async def build(self, request: BuildRequest) -> BuildOutput:
        self.requests.append(request)
        return await super().build(request)

    async def prune_local(self, repository: str, label: str, keep: int,
                          protect: set[str]) -> int:
        return 0


@pytest.fixture
def builder(monkeypatch: pytest.MonkeyPatch) -> RecordingBuilder:
    made = RecordingBuilder()
    monkeypatch.setattr(runs, "make_builders",
                        lambda *a, **k: [(BuilderSpec("memory", "buildah"), made)])
    return made


def upstreams(monkeypatch: pytest.MonkeyPatch, values: dict[str, tuple[str, str]]) -> None:
    monkeypatch.setattr(runs, "resolve_all", fixed_upstreams(values))


def config(project: Project, upstream_specs: str) -> None:
    project.write_config(f"""
        [catalog]
        layers = "layers"
        [state]
        dir = "state"
        [build]
        backend = "buildah"
        {upstream_specs}
    """)


def plan(project: Project, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["-c", str(project.config), "plan", "--json"]) == 0
    data: dict[str, Any] = json.loads(capsys.readouterr().out)
    return {layer["layer"]: layer for layer in data["layers"]}


def test_a_base_image_dockerfile_pins_and_keys_its_other_images(
        project: Project, builder: RecordingBuilder, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: with FROM ${BASE_IMAGE}, a COPY --from=REGISTRY/other:1 that an
    upstream watches was neither pinned nor in the key: a new other:1 still
    planned "up to date"."""
    config(project, f"""
        [upstream.os]
        image = "{REG}/os"
        tag = "1"
        [upstream.other]
        image = "{REG}/other"
        tag = "1"
    """)
    project.layer("app", 'from = "upstream:os"\n',
                  f"ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}}\nCOPY --from={REG}/other:1 /x /x\n"
                  "USER 1000\n")
    upstreams(monkeypatch, {"os": ("1", SHA["a"]), "other": ("1", SHA["b"])})
    assert main(["-c", str(project.config), "build"]) == 0
    request = builder.requests[-1]
    assert request.args["BASE_IMAGE"] == f"{REG}/os@{SHA['a']}"
    assert dict(request.from_pins) == {f"{REG}/other:1": f"{REG}/other@{SHA['b']}"}
    assert plan(project, capsys)["app"]["build"] is False

    upstreams(monkeypatch, {"os": ("1", SHA["a"]), "other": ("1", SHA["c"])})  # other:1 moved
    layer = plan(project, capsys)["app"]
    assert layer["build"] is True and "upstream" in layer["reason"]


def test_a_from_filled_from_an_upstream_uses_the_value_the_build_passes(
        project: Project, builder: RecordingBuilder, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: FROM python:${PY} with PY = "{upstream.python.tag}" was matched
    with the ARG's default when the catalog loaded, and pinned under that name;
    the engine, given PY=3.13.0, found no pin for its FROM."""
    config(project, f"""
        [upstream.python]
        image = "{REG}/python"
        track = "semver"
    """)
    project.layer("app", 'from = "upstream:python"\n[args]\nPY = "{upstream.python.tag}"\n',
                  f"ARG PY=3.12.7\nFROM {REG}/python:${{PY}} AS py\nRUN make\n"
                  "FROM py\nUSER 1000\n")
    upstreams(monkeypatch, {"python": ("3.13.0", SHA["d"])})
    assert main(["-c", str(project.config), "build"]) == 0
    request = builder.requests[-1]
    assert request.args == {"PY": "3.13.0"}  # a literal parent: no BASE_IMAGE
    assert dict(request.from_pins) == {f"{REG}/python:3.13.0": f"{REG}/python@{SHA['d']}"}


def test_a_from_filled_from_an_upstream_must_still_name_the_parent(
        project: Project, builder: RecordingBuilder, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    config(project, f"""
        [upstream.python]
        image = "{REG}/python"
        tag = "3.13.0"
        [upstream.tool]
        image = "{REG}/tool"
        tag = "2"
    """)
    project.layer("app", 'from = "upstream:python"\n[args]\nPY = "{upstream.tool.tag}"\n',
                  f"ARG PY=3.13.0\nFROM {REG}/python:${{PY}}\nUSER 1000\n")
    upstreams(monkeypatch, {"python": ("3.13.0", SHA["d"]), "tool": ("2", SHA["e"])})
    assert main(["-c", str(project.config), "build"]) == 1
    assert f"FROM {REG}/python:2 ({REG}/python:${{PY}} with the build's args) does not " \
           "name upstream:python" in capsys.readouterr().out
    assert builder.requests == []


def test_a_from_filled_at_build_time_needs_from_to_say_the_parent(
        project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    config(project, f'[upstream.python]\nimage = "{REG}/python"\ntrack = "semver"\n')
    project.layer("app", '[args]\nPY = "{upstream.python.tag}"\n',
                  f"ARG PY=3.12.7\nFROM {REG}/python:${{PY}}\nUSER 1000\n")
    assert main(["-c", str(project.config), "graph"]) == 2
    assert "depends on PY, which" in capsys.readouterr().err


def test_targetarch_selects_each_platforms_base(
        project: Project, builder: RecordingBuilder, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: ${TARGETARCH} in a FROM was refused; each platform's image is
    now pinned and in the key."""
    config(project, f"""
        [upstream.os]
        image = "{REG}/os"
        tag = "1"
    """)
    project.layer("app", 'from = "upstream:os"\n',
                  f"ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}} AS base\n"
                  f"FROM {REG}/tools-${{TARGETARCH}}:1 AS tools\n"
                  "FROM base\nCOPY --from=tools /x /x\nUSER 1000\n")
    monkeypatch.setattr(runs, "resolve_all", fixed_upstreams({"os": ("1", SHA["a"])}))

    async def manifest_digest(self: Any, image: Any, tag: str) -> str:
        return SHA["f"]

    monkeypatch.setattr("orchestrator.registry.client.RegistryClient.manifest_digest",
                        manifest_digest)
    assert main(["-c", str(project.config), "build"]) == 0
    assert dict(builder.requests[-1].from_pins) == {
        f"{REG}/tools-amd64:1": f"{REG}/tools-amd64@{SHA['f']}"}


def test_a_dockerfile_changed_before_its_snapshot_is_pinned_as_it_now_reads(
        project: Project, builder: RecordingBuilder, monkeypatch: pytest.MonkeyPatch) -> None:
    """The build plans again with a Dockerfile that changed after it was hashed:
    the images it now names are pinned and keyed, not the ones it named before."""
    import contextlib

    from orchestrator.build.snapshot import ContextChanged, Snapshots

    config(project, f"""
        [upstream.os]
        image = "{REG}/os"
        tag = "1"
        [upstream.tools]
        image = "{REG}/tools"
        tag = "1"
    """)
    dockerfile = project.layer("app", 'from = "upstream:os"\n',
                               "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nUSER 1000\n") / "Dockerfile"
    upstreams(monkeypatch, {"os": ("1", SHA["a"]), "tools": ("1", SHA["b"])})
    real = Snapshots.snapshot
    calls: list[int] = []

    @contextlib.asynccontextmanager
    async def changing(self: Snapshots, layer: Any, context: Any, dest: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:  # edited between the plan and the snapshot
            dockerfile.write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n"
                                  f"COPY --from={REG}/tools:1 /x /x\nUSER 1000\n")
            raise ContextChanged(layer.id, "Dockerfile")
        async with real(self, layer, context, dest) as paths:
            yield paths

    async def manifest_digest(self: Any, image: Any, tag: str) -> str:
        return SHA["f"]  # not used when the run began: looked up as an unwatched image

    monkeypatch.setattr("orchestrator.registry.client.RegistryClient.manifest_digest",
                        manifest_digest)
    monkeypatch.setattr(Snapshots, "snapshot", changing)
    assert main(["-c", str(project.config), "build"]) == 0
    assert dict(builder.requests[-1].from_pins) == {f"{REG}/tools:1": f"{REG}/tools@{SHA['f']}"}
