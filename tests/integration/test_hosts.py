"""The README's install and systemd steps, run as written on booted Debian 12
machines (systemd-nspawn): one buildah host, one Docker host.

Each machine starts from the same cached mmdebstrap rootfs (what a fresh
Debian 12 with buildah holds: Debian's python3, no pip), gets a copy of this
clone and a config, boots, and runs the README's blocks. Select them with
``-m hosts``; they need root, systemd-nspawn and mmdebstrap, and the test bed's
registry (the layers build FROM its seed image)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Testbed
from tests.integration.hosts import (
    Machine,
    base_rootfs,
    copy_repository,
    nspawn_missing,
    readme_block,
    unpack,
)

pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.long(2),
              pytest.mark.timeout(900),
              pytest.mark.skipif(nspawn_missing() is not None,
                                 reason=nspawn_missing() or "")]

COMMON = "On a Debian 12 build host, as root, from a clone"
BUILDAH = "**A buildah host**"
DOCKER = "**A Docker host**"
CLONE = "/root/orchestrator"
CATALOG = "/srv/orchestrator/layers"


@pytest.fixture
def rootfs(tmp_path: Path) -> Iterator[Path]:
    started = time.monotonic()
    tree = unpack(base_rootfs(), tmp_path / "rootfs")
    print(f"rootfs ready in {time.monotonic() - started:.1f} s")
    yield tree
    shutil.rmtree(tree, ignore_errors=True)


def write(rootfs: Path, path: str, text: str, mode: int = 0o644) -> None:
    target = rootfs / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(textwrap.dedent(text))
    target.chmod(mode)


def write_config(rootfs: Path, testbed: Testbed, backend: str, image: str,
                 broken: bool) -> None:
    write(rootfs, "/etc/orchestrator/config.toml", f"""
        [catalog]
        layers = "{CATALOG}"
        [build]
        backend = "{backend}"
        jobs = 2
        [state]
        dir = "/var/lib/orchestrator"
        [upstream.seed]
        image = "{testbed.seed_image}"
        tag = "{testbed.seed_tag}"
        tls_verify = false
    """)
    write(rootfs, f"{CATALOG}/hello/layer.toml",
          f'from = "upstream:seed"\nimage = "{image}"\ntags = ["1"]\n')
    write(rootfs, f"{CATALOG}/hello/Dockerfile",
          "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo hello > /hello.txt\nUSER 1000\n")
    if broken:
        write(rootfs, f"{CATALOG}/broken/layer.toml",
              f'from = "hello"\nimage = "{image}-broken"\ntags = ["1"]\n')
        write(rootfs, f"{CATALOG}/broken/Dockerfile",
              "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo doomed && exit 3\nUSER 1000\n")


def machine(rootfs: Path, tmp_path: Path, *binds: str) -> Machine:
    return Machine(rootfs, tmp_path / "console.log", binds)


def history(m: Machine) -> list[dict[str, Any]]:
    out = m.run("orchestrator history --json", check=False)
    return list(json.loads(out.stdout)["builds"]) if out.returncode == 0 else []


def wait_for_builds(m: Machine, expected: dict[str, str], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = {b["layer"]: b["outcome"] for b in history(m)}
        if all(got.get(layer) == outcome for layer, outcome in expected.items()):
            return
        time.sleep(1)
    raise AssertionError(f"builds: {history(m)}\n"
                         f"{m.run('journalctl -u orchestrator -o cat | tail -40').stdout}")


def install(m: Machine, kind: str) -> dict[str, float]:
    took = {}
    for name, heading in (("common", COMMON), (kind, kind)):
        started = time.monotonic()
        try:
            m.run(readme_block(heading), cwd=CLONE, timeout=900)
        except AssertionError as exc:
            why = m.run("systemctl status orchestrator.service --no-pager -l; journalctl "
                        "--no-pager -n 30", check=False).stdout
            raise AssertionError(f"{exc}\n{why}") from None
        took[name] = time.monotonic() - started
    return took


def test_a_buildah_host_installs_starts_on_every_boot_and_builds(
        rootfs: Path, tmp_path: Path, testbed: Testbed) -> None:
    started = time.monotonic()
    copy_repository(rootfs, CLONE)
    image = f"orch-hosts-{uuid.uuid4().hex[:8]}"
    write_config(rootfs, testbed, "buildah", image, broken=True)
    assert not (rootfs / "var/lib/containers").exists()  # buildah never ran here
    m = machine(rootfs, tmp_path).boot()
    try:
        booted = time.monotonic()
        took = install(m, BUILDAH)
        # enable --now returned: the first start on this fresh boot reached READY.
        assert m.run("systemctl is-active orchestrator.service").stdout.strip() == "active"
        assert m.run("getent group docker", check=False).returncode == 2  # buildah-only
        wait_for_builds(m, {"hello": "built", "broken": "failed"})

        # The failure is an error in the journal; the routine lines are not.
        errors = m.run("journalctl -u orchestrator -p err -o cat").stdout
        failed = [json.loads(line) for line in errors.splitlines() if line.startswith("{")]
        assert any(e["event"] == "build_finished" and e.get("layer") == "broken"
                   and e["level"] == "error" for e in failed), errors
        assert all(e["level"] in ("error", "critical") for e in failed), errors
        info = m.run("journalctl -u orchestrator -p info..info -o cat").stdout
        assert '"event": "daemon_ready"' in info and '"level": "error"' not in info

        # Members of the socket's group use it; anyone else is told to join it.
        m.run("useradd -m -G orchestrator member && useradd -m outsider")
        member = m.run("orchestrator status", user="member", cwd="/")
        assert member.stdout.startswith("orchestrator ready"), member.stdout
        outsider = m.run("orchestrator status", user="outsider", cwd="/", check=False)
        assert outsider.returncode == 1, outsider
        assert "permission denied: join the group `orchestrator`" in outsider.stderr

        # Socket activation: with the service stopped, a client starts it.
        m.run("systemctl stop orchestrator.service")
        assert m.run("systemctl is-active orchestrator.socket").stdout.strip() == "active"
        activated = m.run("orchestrator status", user="member", cwd="/")
        assert activated.stdout.startswith("orchestrator "), activated.stdout  # it answers
        m.run("until systemctl is-active -q orchestrator.service; do sleep 0.2; done",
              timeout=120)
        assert (rootfs / "var/lib/containers").is_dir()
        first_boot = time.monotonic() - booted

        # A reboot: /run/containers is gone again; the service starts with the
        # machine, once, and builds.
        m.poweroff()
        rebooted = time.monotonic()
        m.boot()
        assert m.run("systemctl is-active orchestrator.service").stdout.strip() == "active"
        assert m.run("systemctl show -p NRestarts --value orchestrator.service"
                     ).stdout.strip() == "0"
        before = len(history(m))
        m.run("orchestrator trigger hello --force")
        deadline = time.monotonic() + 120
        while len([b for b in history(m) if b["outcome"] == "built"]) < 2:
            assert time.monotonic() < deadline, history(m)
            time.sleep(1)
        assert len(history(m)) > before
        print(f"buildah host: install {took}, first boot {first_boot:.1f} s, "
              f"reboot and rebuild {time.monotonic() - rebooted:.1f} s, "
              f"whole test {time.monotonic() - started:.1f} s")
    finally:
        m.poweroff()


ENGINE_SOCKET = """
    # Stands in for docker.io's docker.socket: the test bed's engine, behind
    # /run/docker.sock (root:docker 0660) as docker.io lays it out.
    [Socket]
    ListenStream=/run/docker.sock
    SocketUser=root
    SocketGroup=docker
    SocketMode=0660
    [Install]
    WantedBy=sockets.target
"""
ENGINE_SERVICE = """
    [Service]
    ExecStart=/lib/systemd/systemd-socket-proxyd /srv/testbed-engine.sock
"""


def prepare_docker_engine(rootfs: Path) -> None:
    """The engine: the test bed's dockerd, reached through a socket proxy with
    docker.io's path, owner and mode. docker.io's own dockerd and containerd
    never start here (this machine shares the host's network)."""
    subprocess.run(["chroot", str(rootfs), "groupadd", "--system", "docker"], check=True)
    write(rootfs, "/usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", 0o755)
    units = rootfs / "etc/systemd/system"
    for unit in ("docker.service", "docker.socket", "containerd.service"):
        (units / unit).symlink_to("/dev/null")
    write(rootfs, "/etc/systemd/system/testbed-engine.socket", ENGINE_SOCKET)
    write(rootfs, "/etc/systemd/system/testbed-engine.service", ENGINE_SERVICE)
    (units / "sockets.target.wants").mkdir(exist_ok=True)
    (units / "sockets.target.wants/testbed-engine.socket").symlink_to(
        "/etc/systemd/system/testbed-engine.socket")


def test_a_docker_host_runs_the_base_unit_with_the_docker_group(
        rootfs: Path, tmp_path: Path, testbed: Testbed) -> None:
    started = time.monotonic()
    engine = testbed.docker_host.removeprefix("unix://")
    copy_repository(rootfs, CLONE)
    image = f"orch-hosts-{uuid.uuid4().hex[:8]}"
    write_config(rootfs, testbed, "buildkit", image, broken=False)
    prepare_docker_engine(rootfs)
    m = machine(rootfs, tmp_path, f"{engine}:/srv/testbed-engine.sock").boot()
    try:
        took = install(m, DOCKER)
        assert not (rootfs / "etc/systemd/system/orchestrator.service.d").exists()
        pid = m.run("systemctl show -p MainPID --value orchestrator.service").stdout.strip()
        status = m.run(f"cat /proc/{pid}/status").stdout
        uid = m.run("id -u orchestrator").stdout.strip()
        docker_gid = m.run("getent group docker | cut -d: -f3").stdout.strip()
        assert f"Uid:\t{uid}\t" in status and uid != "0", status
        groups = next(line for line in status.splitlines() if line.startswith("Groups:"))
        assert docker_gid in groups.split(), status
        wait_for_builds(m, {"hello": "built"})
        print(f"docker host: install {took}, whole test {time.monotonic() - started:.1f} s")
    finally:
        m.poweroff()
        _remove_images(engine, image)


def _remove_images(engine: str, image: str) -> None:
    env = {**os.environ, "DOCKER_HOST": f"unix://{engine}"}
    found = subprocess.run(["/usr/bin/docker", "images", "-q", "--filter",
                            f"reference={image}*"], capture_output=True, text=True, env=env)
    ids = sorted(set(found.stdout.split()))
    if ids:
        subprocess.run(["/usr/bin/docker", "rmi", "-f", *ids], capture_output=True, env=env)
