"""Acceptance: a pool of real engines (two dockerd, and buildah beside one), images
handed from engine to engine through the registry."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Project, Testbed, built, image_config, unique_namespace
from tests.integration.daemon_helpers import DaemonProcess, api, wait_until

pytestmark = pytest.mark.integration
PARENT = {"a1": "base", "a2": "a1", "b1": "base", "b2": "b1"}


def docker2(testbed: Testbed) -> str:
    env = (Path(__file__).resolve().parents[2] / ".testbed" / "env")
    settings = dict(line.split("=", 1) for line in env.read_text().splitlines()) \
        if env.exists() else {}
    return os.environ.get("ORCH_TEST_DOCKER2_HOST", settings.get("ORCH_TEST_DOCKER2_HOST", ""))


def pool_config(project: Project, testbed: Testbed, namespace: str,
                builders: list[tuple[str, str, str | None]], extra: str = "") -> None:
    blocks = "\n".join(
        f'[[builders]]\nname = "{name}"\nbackend = "{backend}"\nslots = 1\n'
        + (f'address = "{address}"\n' if address else "")
        for name, backend, address in builders)
    project.write_config(f"""
[catalog]
layers = "layers"
[registry]
url = "{testbed.registry}/{namespace}"
tls_verify = false
[state]
dir = "state"
[control]
socket = "control.sock"
[daemon]
drain_timeout = "5s"
[upstream.seed]
image = "{testbed.seed_image}"
tag = "{testbed.seed_tag}"
tls_verify = false
{extra}
{blocks}
""")


def two_branches(project: Project, sleep_s: int) -> None:
    # A nonce in every step: an engine's step cache (which outlives a test)
    # must not answer for a build that the test times.
    nonce = uuid.uuid4().hex
    project.layer("base", 'from = "upstream:seed"\n',
                  f"ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}}\nRUN echo {nonce} > /tmp/base\n"
                  "USER 1000\n")
    for name, parent in PARENT.items():
        project.layer(name, f'from = "{parent}"\n',
                      f"ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}}\nRUN sleep {sleep_s}; echo {name} "
                      f"{nonce} > /tmp/{name}\nUSER 1000\n")


def by_layer(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["layer"]: e for e in report["layers"]}


def makespan(report: dict[str, Any]) -> float:
    spans = [(e["started"], e["finished"]) for e in report["layers"] if e["outcome"] == "built"]
    return max(end for _, end in spans) - min(start for start, _ in spans)


def test_two_engines_build_one_hierarchy_on_exact_digests(
    project: Project, testbed: Testbed
) -> None:
    namespace = unique_namespace()
    pool_config(project, testbed, namespace, [("engine-a", "docker", testbed.docker_host),
                                              ("engine-b", "docker", docker2(testbed))])
    two_branches(project, 2)

    rc, report, err = project.cli_json("build")

    assert rc == 0, err
    layers = by_layer(report)
    assert built(report) == {"base", *PARENT}
    assert {layers["a1"]["builder"], layers["b1"]["builder"]} == {"engine-a", "engine-b"}
    # A child goes where its parent was built when that engine is free.
    assert layers["a2"]["builder"] == layers["a1"]["builder"]
    assert layers["b2"]["builder"] == layers["b1"]["builder"]
    for layer, parent in PARENT.items():
        labels = image_config(testbed.registry, f"{namespace}/{layer}",
                              layers[layer]["digest"])["config"]["Labels"]
        assert labels["org.opencontainers.image.base.digest"] == layers[parent]["digest"]


@pytest.mark.serial  # compares wall-clock makespans: runs alone
def test_two_engines_have_a_shorter_makespan_than_one(
    project: Project, testbed: Testbed, tmp_path: Path
) -> None:
    pool_config(project, testbed, unique_namespace(),
                [("engine-a", "docker", testbed.docker_host)])
    two_branches(project, 3)
    rc, one, err = project.cli_json("build")
    assert rc == 0, err

    pool_config(project, testbed, unique_namespace(),  # a fresh namespace: all cold again
                [("engine-a", "docker", testbed.docker_host),
                 ("engine-b", "docker", docker2(testbed))])
    rc, two, err = project.cli_json("build", "--force")
    assert rc == 0, err
    assert makespan(two) < makespan(one), (makespan(two), makespan(one))


def test_mixed_pool_buildah_and_buildkit(project: Project, testbed: Testbed) -> None:
    namespace = unique_namespace()
    pool_config(project, testbed, namespace, [("local-buildah", "buildah", None),
                                              ("engine-a", "docker", testbed.docker_host)])
    two_branches(project, 2)
    rc, report, err = project.cli_json("build")
    assert rc == 0, err
    layers = by_layer(report)
    assert {e["builder"] for e in layers.values()} == {"local-buildah", "engine-a"}
    for layer, parent in PARENT.items():
        labels = image_config(testbed.registry, f"{namespace}/{layer}",
                              layers[layer]["digest"])["config"]["Labels"]
        assert labels["org.opencontainers.image.base.digest"] == layers[parent]["digest"]


def test_more_than_one_builder_needs_a_registry(project: Project, testbed: Testbed) -> None:
    project.write_config(f"""
[upstream.seed]
image = "{testbed.seed_image}"
tag = "1"
[[builders]]
backend = "buildah"
[[builders]]
backend = "docker"
address = "{testbed.docker_host}"
""")
    two_branches(project, 1)
    proc = project.cli("graph")
    assert proc.returncode == 2
    assert "more than one builder needs a [registry]" in proc.stderr


@contextlib.contextmanager
def private_dockerd(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A Docker engine of this test's own, on its own bridge, that it may kill."""
    tag = uuid.uuid4().hex[:6]
    run = Path("/run/orchestrator-testbed")
    sock = run / f"t{tag}.sock"
    bridge = f"orcht{tag}"
    subprocess.run(["ip", "link", "add", "name", bridge, "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "add", "172.31.252.1/24", "dev", bridge], check=True)
    subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
    data = tmp_path / "dockerd"
    proc = subprocess.Popen(
        ["dockerd", "--host", f"unix://{sock}", "--data-root", str(data), "--exec-root",
         str(run / f"t{tag}-exec"), "--pidfile", str(tmp_path / "dockerd.pid"),
         "--bridge", bridge, "--iptables=false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        env = {**os.environ, "DOCKER_HOST": f"unix://{sock}"}
        wait_until(lambda: subprocess.run(["/usr/bin/docker", "version"], env=env,
                                          capture_output=True).returncode == 0, 60,
                   what="private dockerd")
        yield f"unix://{sock}", proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # A killed engine leaves its mounts behind; lazily detach them.
        for line in Path("/proc/mounts").read_text().splitlines():
            target = line.split()[1]
            if target.startswith((str(data), str(run / f"t{tag}-exec"))):
                subprocess.run(["umount", "-l", target], capture_output=True)
        subprocess.run(["ip", "link", "delete", bridge], capture_output=True)


def test_a_dead_engine_is_marked_down_and_its_build_retried_elsewhere(
    project: Project, testbed: Testbed, tmp_path: Path
) -> None:
    with private_dockerd(tmp_path) as (address, engine):
        pool_config(project, testbed, unique_namespace(),
                    [("doomed", "docker", address), ("steady", "docker", testbed.docker_host)])
        project.layer("base", 'from = "upstream:seed"\n')
        project.layer("slow", 'from = "base"\n',
                      "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo begin; sleep 15; echo end\n"
                      "USER 1000\n")
        daemon = DaemonProcess(project).ready()
        try:
            running = wait_until(lambda: next((b for b in daemon.builds("slow")
                                               if b["outcome"] == "running"), None), 120,
                                 what="slow build running")
            assert running["builder"] == "doomed"  # it follows its parent
            time.sleep(2)
            os.killpg(engine.pid, signal.SIGKILL)
            daemon.idle(180)
            slow = daemon.builds("slow")
            assert [b["builder"] for b in reversed(slow)] == ["doomed", "steady"]
            assert [b["outcome"] for b in reversed(slow)] == ["failed", "built"]
            builders = {b["name"]: b for b in api(daemon.socket, "GET", "/v1/status")[1]
                        ["builders"]}
            assert builders["doomed"]["state"] == "down" and builders["steady"]["state"] == "up"
            assert any(e["event"] == "builder_down" for e in daemon.events())
            assert any(e["event"] == "build_retried" for e in daemon.events())
        finally:
            daemon.kill()
