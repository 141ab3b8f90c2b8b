"""The shipped systemd units pass systemd-analyze and keep their promises."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator.core.model import DaemonConfig

UNITS = Path(__file__).resolve().parents[2] / "systemd"
ANALYZE = shutil.which("systemd-analyze")

needs_analyze = pytest.mark.skipif(
    ANALYZE is None and not os.environ.get("ORCH_REQUIRE_TESTBED"),
    reason="systemd-analyze not installed")


def installed_units(tmp_path: Path, buildah: bool = False) -> Path:
    """Copies of the units whose ExecStart names this host's installed entry point
    (verify checks that the binary exists); everything else as shipped."""
    binary = shutil.which("orchestrator")
    assert binary, "the package is not installed (pip install -e .)"
    for name in ("orchestrator.service", "orchestrator.socket"):
        text = (UNITS / name).read_text().replace("/usr/local/bin/orchestrator", binary)
        (tmp_path / name).write_text(text)
    if buildah:
        dropins = tmp_path / "orchestrator.service.d"
        dropins.mkdir()
        shutil.copy(UNITS / "orchestrator-buildah.conf", dropins / "buildah.conf")
    return tmp_path / "orchestrator.service"


@needs_analyze
def test_units_verify(tmp_path: Path) -> None:
    service = installed_units(tmp_path)
    proc = subprocess.run([str(ANALYZE), "verify", str(service), str(tmp_path /
                                                                     "orchestrator.socket")],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def exposure(service: Path) -> float:
    proc = subprocess.run([str(ANALYZE), "security", "--offline=yes", str(service)],
                          capture_output=True, text=True)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout + proc.stderr)
    assert match, proc.stdout + proc.stderr
    return float(match.group(1))


@needs_analyze
def test_buildkit_client_mode_is_well_sandboxed(tmp_path: Path) -> None:
    assert exposure(installed_units(tmp_path)) <= 4.5


@needs_analyze
def test_buildah_drop_in_still_verifies(tmp_path: Path) -> None:
    service = installed_units(tmp_path, buildah=True)
    proc = subprocess.run([str(ANALYZE), "verify", str(service)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert exposure(service) < 9.6  # still far better than docker.service


def test_stop_timeout_covers_the_drain() -> None:
    text = (UNITS / "orchestrator.service").read_text()
    minutes = int(re.search(r"^TimeoutStopSec=(\d+)min$", text, re.M).group(1))  # type: ignore[union-attr]
    assert minutes * 60 > DaemonConfig().drain_s
    for setting in ("Type=notify", "ExecReload=", "WatchdogSec=", "Restart=on-failure",
                    "StateDirectory=orchestrator", "KillMode=mixed"):
        assert setting in text
    socket_unit = (UNITS / "orchestrator.socket").read_text()
    assert "SocketMode=0660" in socket_unit and "SocketGroup=" in socket_unit


PATH_SETTINGS = ("ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "ExecPaths",
                 "NoExecPaths", "BindPaths", "BindReadOnlyPaths")


def test_the_units_name_no_path_that_a_fresh_boot_lacks() -> None:
    """A path the sandbox must find (no "-" prefix) fails the start with
    226/NAMESPACE when it is missing: /run is empty at every boot, and buildah's
    folders exist only once buildah has run. The units may only name paths a
    fresh Debian has, or mark them optional."""
    always_there = ("/usr", "/etc", "/var/tmp", "/tmp", "/dev", "/proc", "/sys")
    for unit in ("orchestrator.service", "orchestrator-buildah.conf"):
        for line in (UNITS / unit).read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() not in PATH_SETTINGS:
                continue
            for path in value.split():
                path = path.lstrip("+")
                assert path.startswith("-") or path.rstrip("/") in always_there, \
                    f"{unit}: {line}: {path} may not exist when the service starts"


def test_the_buildah_drop_in_needs_no_docker_group() -> None:
    text = (UNITS / "orchestrator-buildah.conf").read_text()
    assert re.search(r"^SupplementaryGroups=$", text, re.M)
    assert re.search(r"^User=root$", text, re.M)
