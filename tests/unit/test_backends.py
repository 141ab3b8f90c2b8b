"""Backends build the right command lines (recorded, not run)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.core.errors import BuildFailed
from orchestrator.core.model import BuildahConfig, BuildKitConfig
from orchestrator.engines.base import BuildRequest
from orchestrator.engines.buildah import BuildahBuilder
from orchestrator.engines.buildkit import BuildctlBuilder, DockerBuildKitBuilder
from orchestrator.engines.runner import Captured, builder_env
from tests.fakes import RecordingRunner


def request(tmp_path: Path, push: bool = True) -> BuildRequest:
    return BuildRequest(
        layer="py:3.12", context=tmp_path / "ctx", dockerfile=tmp_path / "ctx" / "Dockerfile",
        args={"BASE_IMAGE": "reg:5000/base/os@sha256:abc", "V": "3.12"},
        labels={"org.opencontainers.image.title": "py"},
        tags=("reg:5000/base/py:3.12", "reg:5000/base/py:bk-k"), push=push,
        log_path=tmp_path / "log", timeout_s=60,
    )


def _write_digest(argv: list[str]) -> int:
    if "--digestfile" in argv:
        Path(argv[argv.index("--digestfile") + 1]).write_text("sha256:pushed")
    return 0


def _buildah_images(argv: list[str]) -> Captured:
    return Captured(0, json.dumps([{"digest": "sha256:local"}]), "")


async def test_buildah_build_then_push_each_tag_key_tag_last(tmp_path: Path) -> None:
    runner = RecordingRunner(_write_digest, _buildah_images)
    builder = BuildahBuilder(BuildahConfig(root="/srv/storage", layers=True), runner,
                             authfile=Path("/etc/auth.json"), insecure_hosts={"reg:5000"})

    output = await builder.build(request(tmp_path))

    bud = runner.calls[0]
    assert bud[:4] == ["buildah", "--root", "/srv/storage", "bud"]
    assert bud[4:6] == ["--isolation", "chroot"] and "--layers" in bud
    assert "--tls-verify=false" in bud
    at = bud.index("--authfile")
    assert bud[at:at + 2] == ["--authfile", "/etc/auth.json"]
    assert "BASE_IMAGE=reg:5000/base/os@sha256:abc" in bud and "V=3.12" in bud
    assert bud[-1] == str(tmp_path / "ctx")
    pushes = [c for c in runner.calls if "push" in c]
    assert [c[-1] for c in pushes] == ["reg:5000/base/py:3.12", "reg:5000/base/py:bk-k"]
    assert output.digest == "sha256:pushed"


def test_forced_builds_skip_step_caches(tmp_path: Path) -> None:
    from dataclasses import replace

    forced = replace(request(tmp_path), no_cache=True)
    buildah = BuildahBuilder(BuildahConfig(layers=True), RecordingRunner())
    cached = buildah.build_argv(request(tmp_path), tmp_path / "iid")
    assert "--layers" in cached and "--force-rm" in cached  # no container left on failure
    assert "--layers" not in buildah.build_argv(forced, tmp_path / "iid")
    docker = DockerBuildKitBuilder(BuildKitConfig(), RecordingRunner())
    assert "--no-cache" in docker.build_argv(forced, tmp_path / "iid")
    assert "--no-cache" not in docker.build_argv(request(tmp_path), tmp_path / "iid")


async def test_buildah_failure_raises_with_log_tail(tmp_path: Path) -> None:
    runner = RecordingRunner(lambda argv: 1)
    builder = BuildahBuilder(BuildahConfig(), runner)
    with pytest.raises(BuildFailed) as info:
        await builder.build(request(tmp_path))
    assert info.value.returncode == 1 and "buildah" in info.value.log_tail
    assert not [c for c in runner.calls if "push" in c]  # nothing pushed after a failure


async def test_docker_buildkit_env_and_argv(tmp_path: Path) -> None:
    def on_run(argv: list[str]) -> int:
        if "--iidfile" in argv:
            Path(argv[argv.index("--iidfile") + 1]).write_text("sha256:iid")
        return 0

    class EngineApi:  # the Docker engine API seam (aiodocker in real use)
        async def inspect(self, ref: str) -> dict[str, object]:
            assert ref == "reg:5000/base/py:bk-k"
            return {"RepoDigests": ["reg:5000/base/py@sha256:pushed"]}

    runner = RecordingRunner(on_run)
    config = BuildKitConfig(docker_host="unix:///run/d.sock")
    builder = DockerBuildKitBuilder(config, runner, docker_config_dir=Path("/tmp/dc"))
    builder.api = EngineApi()  # type: ignore[assignment]

    output = await builder.build(request(tmp_path))

    assert runner.calls[0][:3] == ["/usr/bin/docker", "build", "--progress=plain"]
    env = runner.envs[0]
    assert env is not None and env["DOCKER_BUILDKIT"] == "1"
    assert env["DOCKER_HOST"] == "unix:///run/d.sock" and env["DOCKER_CONFIG"] == "/tmp/dc"
    assert [c[-1] for c in runner.calls if c[1] == "push"] == [
        "reg:5000/base/py:3.12", "reg:5000/base/py:bk-k"]
    assert output.digest == "sha256:pushed"


def test_buildctl_argv_pushes_all_names_in_one_output(tmp_path: Path) -> None:
    builder = BuildctlBuilder(BuildKitConfig(addr="tcp://bk:1234"), RecordingRunner(),
                              insecure_hosts={"reg:5000"})
    argv = builder.build_argv(request(tmp_path), tmp_path / "meta.json")
    assert argv[:4] == ["buildctl", "--addr", "tcp://bk:1234", "build"]
    assert "build-arg:BASE_IMAGE=reg:5000/base/os@sha256:abc" in argv
    output = argv[argv.index("--output") + 1]
    assert output == ('type=image,"name=reg:5000/base/py:3.12,reg:5000/base/py:bk-k",'
                      'push=true,registry.insecure=true')
    mtls = BuildctlBuilder(BuildKitConfig(addr="tcp://bk:1234", tls=("ca.pem", "c.pem", "k.pem")),
                           RecordingRunner())
    assert mtls.build_argv(request(tmp_path), tmp_path / "m.json")[:9] == [
        "buildctl", "--addr", "tcp://bk:1234", "--tlscacert", "ca.pem", "--tlscert", "c.pem",
        "--tlskey", "k.pem"]


def test_buildctl_named_contexts_use_the_name_the_frontend_looks_up(tmp_path: Path) -> None:
    """Regression: main passed context:docker.io/library/debian:bookworm, which
    BuildKit's frontend never asks for (dockerui's NamedContext looks the familiar
    name up, ``:latest`` trimmed), so the moving tag was pulled instead."""
    pinned = f"reg:5000/mirror/debian@sha256:{'a' * 64}"
    pins = {"docker.io/library/debian:bookworm": pinned, "library/debian:bookworm": pinned,
            "debian:latest": pinned, "docker.io/myorg/app": pinned,
            "reg:5000/base/os:1": pinned}
    builder = BuildctlBuilder(BuildKitConfig(addr="tcp://bk:1234"), RecordingRunner())
    argv = builder.build_argv(replace(request(tmp_path), from_pins=pins), tmp_path / "m.json")
    contexts = sorted(argv[i + 1] for i, word in enumerate(argv)
                      if word == "--opt" and argv[i + 1].startswith("context:"))
    assert contexts == sorted(f"context:{name}=docker-image://{pinned}" for name in (
        "debian", "debian:bookworm", "myorg/app", "reg:5000/base/os:1"))


def test_builders_never_inherit_systemd_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("LISTEN_FDS", "1")
    env = builder_env({"X": "1"})
    assert "NOTIFY_SOCKET" not in env and "LISTEN_FDS" not in env and env["X"] == "1"


def test_first_error_line_skips_step_headers() -> None:
    from orchestrator.engines.runner import first_error_line

    buildah = ("$ buildah bud --label error=x\nSTEP 2/3: RUN echo 'ERROR: x' >&2; exit 3\n"
               "ERROR: tests failed\nerror building at STEP \"RUN …\": exit status 3\n")
    assert first_error_line(buildah) == "ERROR: tests failed"
    buildkit = ("#5 [2/2] RUN make || echo failed\n#5 0.2 make: *** No rule. Stop.\n"
                "#5 ERROR: process \"/bin/sh -c make\" did not complete successfully\n")
    assert first_error_line(buildkit) == '#5 ERROR: process "/bin/sh -c make" did not ' \
        "complete successfully"
    assert first_error_line("all good\n") is None


async def test_buildah_prune_lists_by_name_and_removes_only_its_own_labelled_images() -> None:
    """Listed with a name filter (a label filter reads every image's config in the
    store); only older images of this repository that carry the layer's label go."""
    repo = "reg/ns/app"
    images = [
        {"id": "new", "names": [f"{repo}:bk-3"], "digest": "sha256:3", "created": 3},
        {"id": "mid", "names": [f"{repo}:bk-2"], "digest": "sha256:2", "created": 2},
        {"id": "hand", "names": [f"{repo}:mine"], "digest": "sha256:h", "created": 1},
        {"id": "other", "names": [f"{repo}-other:1"], "digest": "sha256:o", "created": 0},
        {"id": "kept", "names": [f"{repo}:bk-0"], "digest": "sha256:k", "created": 0},
    ]
    labels = {"mid": {"dev.orchestrator.layer": "app"}, "hand": {"maintainer": "me"},
              "kept": {"dev.orchestrator.layer": "app"},
              "other": {"dev.orchestrator.layer": "app"}}

    def capture(argv: list[str]) -> Captured:
        if "images" in argv:
            return Captured(0, json.dumps(images), "")
        if "inspect" in argv:
            return Captured(0, json.dumps({"OCIv1": {"config": {"Labels": labels[argv[-1]]}}}),
                            "")
        return Captured(0, "", "")

    runner = RecordingRunner(capture=capture)
    builder = BuildahBuilder(BuildahConfig(), runner)
    removed = await builder.prune_local(repo, "dev.orchestrator.layer=app", 1, {"sha256:k"})

    assert removed == 1
    listing = next(c for c in runner.calls if "images" in c)
    assert listing[-2:] == ["--filter", f"reference={repo}"]
    assert [c[-1] for c in runner.calls if "rmi" in c] == ["mid"]
