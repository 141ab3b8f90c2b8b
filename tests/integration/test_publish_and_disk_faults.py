"""A registry that dies mid-build and a state dir that fills up, on a live daemon:
no human tag on an unfinished build, nothing retried by hand, no intent lost,
no crash into a restart loop. Real daemon, buildah and registries."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Project, Testbed, image_config, manifest_digest, unique_namespace
from tests.integration.daemon_helpers import DaemonProcess, api, daemon_config, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.long(1.7)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRegistry:
    """A distribution registry of the test's own, on a port of its own, that the
    test may kill and start again (on the same storage)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.address = f"127.0.0.1:{_free_port()}"
        (root / "data").mkdir(parents=True, exist_ok=True)
        (root / "config.yml").write_text(
            "version: 0.1\nlog: {level: error}\nstorage:\n"
            f"  filesystem: {{rootdirectory: {root / 'data'}}}\n  delete: {{enabled: true}}\n"
            f"http: {{addr: {self.address}}}\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["docker-registry", "serve", str(self.root / "config.yml")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def answers() -> bool:
            try:
                urllib.request.urlopen(f"http://{self.address}/v2/", timeout=1)
                return True
            except OSError:
                return False

        wait_until(answers, 20, what="the private registry")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def private_registry(tmp_path: Path) -> Iterator[PrivateRegistry]:
    registry = PrivateRegistry(tmp_path / "private-registry")
    registry.start()
    yield registry
    registry.kill()


def _events_of(daemon: DaemonProcess, event: str, layer: str | None = None) -> list[dict]:
    return [e for e in daemon.events() if e.get("event") == event and
            (layer is None or e.get("layer") == layer)]


def test_a_registry_that_dies_mid_build_is_retried_by_itself_and_tags_stay_true(
        project: Project, testbed: Testbed, private_registry: PrivateRegistry) -> None:
    namespace = unique_namespace()
    daemon_config(project, private_registry.address, namespace,
                  f"{testbed.registry}/{testbed.seed_image.split('/', 1)[1]}",
                  testbed.seed_tag, drain="5s")
    project.layer("fw", 'from = "upstream:seed"\ntags = ["1"]\n',
                  "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY marker /marker\n"
                  "RUN sleep 3 && cat /marker\nUSER 1000\n", files={"marker": "one\n"})
    project.layer("app", 'from = "fw"\ntags = ["1"]\n')
    daemon = DaemonProcess(project).ready(120)
    try:
        daemon.idle(180)
        repo = f"{namespace}/fw"
        first = manifest_digest(private_registry.address, repo, "1")
        assert first is not None
        (project.layers / "fw" / "marker").write_text("two\n")
        wait_until(lambda: len(_events_of(daemon, "build_started", "fw")) == 2, 60,
                   what="the second build of fw")
        private_registry.kill()  # mid-build: the engine's push fails
        wait_until(lambda: _events_of(daemon, "build_retry_scheduled", "fw"), 120,
                   what="a retry scheduled by the daemon itself")
        assert api(daemon.socket, "GET", "/v1/status")[1]["retrying"]["fw"]["by_itself"]
        private_registry.start()  # back, on the same storage: nobody triggers anything
        wait_until(lambda: any(b["outcome"] == "built" for b in daemon.builds("fw")[:1]),
                   180, 0.5, "fw rebuilt by the daemon's own retry")
        daemon.idle(180)
        [last] = [b for b in daemon.builds("fw") if b["outcome"] == "built"][:1]
        human = manifest_digest(private_registry.address, repo, "1")
        key = manifest_digest(private_registry.address, repo, f"bk-{last['build_key']}")
        assert human == key == last["digest"] != first
        labels = image_config(private_registry.address, f"{namespace}/app", "1")["config"][
            "Labels"]
        assert labels["org.opencontainers.image.base.digest"] == human
    finally:
        daemon.stop()


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


def _fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` to the last block."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def test_a_full_state_dir_holds_every_intent_and_the_daemon_stays_up(
        project: Project, testbed: Testbed) -> None:
    state = project.root / "state"
    if os.geteuid() != 0 or not _mount_tmpfs(state, "3m"):
        pytest.skip("needs root to mount a small tmpfs for the state dir")
    try:
        namespace = unique_namespace()
        daemon_config(project, testbed.registry, namespace, testbed.seed_image,
                      testbed.seed_tag, drain="5s",
                      extra='[provenance]\nenabled = false\n')
        project.layer("base", 'from = "upstream:seed"\ntags = ["1"]\n')
        project.layer("edited", 'from = "base"\ntags = ["1"]\n', files={"note": "one\n"})
        project.layer("triggered", 'from = "base"\ntags = ["1"]\n')
        daemon = DaemonProcess(project).ready(120)
        daemon.idle(180)
        before = {layer: len([b for b in daemon.builds(layer) if b["outcome"] == "built"])
                  for layer in ("edited", "triggered")}
        filler = _fill(state)
        status, body = api(daemon.socket, "POST", "/v1/builds",
                           {"layers": ["triggered"], "force": True})
        assert status == 202, body  # held, not a 500
        request = body["id"]
        (project.layers / "edited" / "note").write_text("two\n")
        wait_until(lambda: not api(daemon.socket, "GET", "/v1/status")[1]["state"]["writable"],
                   30, what="status saying the state refuses writes")
        wait_until(lambda: len(api(daemon.socket, "GET", "/v1/status")[1]["state"]["held"])
                   >= 2, 30, what="the edit held too")
        assert api(daemon.socket, "GET", f"/v1/builds/{request}")[1]["state"] == "held"
        metrics = api(daemon.socket, "GET", "/metrics")[1]
        assert "orchestrator_state_writable 0.0" in metrics
        filler.unlink()  # space returns: nothing is triggered by hand
        wait_until(lambda: len([b for b in daemon.builds("edited") if b["outcome"] == "built"])
                   > before["edited"], 180, 0.5, "the edit made while full, rebuilt")
        wait_until(lambda: len([b for b in daemon.builds("triggered")
                                if b["outcome"] == "built"]) > before["triggered"],
                   180, 0.5, "the trigger made while full, built")
        daemon.idle(180)
        assert api(daemon.socket, "GET", f"/v1/builds/{request}")[1]["state"] == "done"
        assert api(daemon.socket, "GET", "/v1/status")[1]["state"]["writable"]
        errors = [e for e in daemon.events() if e.get("event") == "state_unwritable"]
        assert len(errors) == 1, errors  # once, not once per retry
        # A restart on a full disk: no traceback, no exit into a restart loop.
        filler = _fill(state)
        assert daemon.stop() == 0
        again = DaemonProcess(project)
        time.sleep(3)
        assert again.proc.poll() is None, again.logs()
        assert "Traceback" not in again.logs()
        filler.unlink()
        again.ready(120)
        again.idle(180)
        assert again.stop() == 0
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)
        shutil.rmtree(state, ignore_errors=True)

