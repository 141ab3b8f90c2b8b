"""Acceptance: failure isolation, overlap of independent branches, credentials, Ctrl-C."""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.conftest import (
    Project,
    Testbed,
    built,
    manifest_digest,
    outcomes,
    unique_namespace,
)
from tests.integration.hierarchy import BRANCH_A, BRANCH_B, write_config, write_layers

pytestmark = pytest.mark.integration


@pytest.mark.serial  # counts buildah's working containers machine-wide: runs alone
def test_failed_layer_skips_its_descendants_and_the_other_branch_builds(
    project: Project, testbed: Testbed
) -> None:
    # With the step cache on, as production hosts run it.
    write_config(project, testbed, unique_namespace(), extra="[build.buildah]\nlayers = true")
    write_layers(project, fail_tools=True)
    containers_before = {c["id"] for c in _working_containers()}

    proc = project.cli("build")

    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert any(line.startswith("FAILED   tools") for line in lines)
    # The failure's log tail is shown: the builder's own error line.
    assert any("| " in line and "exit 3" in line for line in lines), proc.stdout
    for layer in BRANCH_A - {"tools"}:
        assert any(line.startswith("skipped") and f" {layer} " in line and "parent" in line
                   for line in lines), layer
    rc, report, _ = project.cli_json("build")
    assert rc == 1
    states = outcomes(report)
    assert states["tools"] == "failed"
    assert {states[layer] for layer in BRANCH_A - {"tools"}} == {"skipped"}
    assert {states[layer] for layer in BRANCH_B} == {"reused"}  # built by the first run
    # buildah keeps a failed step's working container unless told not to.
    assert {c["id"] for c in _working_containers()} <= containers_before


@pytest.mark.serial  # compares wall-clock overlaps: runs alone
def test_independent_branches_overlap_with_two_jobs(project: Project, testbed: Testbed) -> None:
    write_config(project, testbed, unique_namespace(), jobs=2)
    write_layers(project, sleep_s=2)

    rc, report, err = project.cli_json("build", "tools", "other")

    assert rc == 0, err
    span = {e["layer"]: (e["started"], e["finished"]) for e in report["layers"]
            if e["outcome"] == "built"}
    (a_start, a_end), (b_start, b_end) = span["tools"], span["other"]
    assert a_start < b_end and b_start < a_end, span  # the two builds ran at the same time


@pytest.mark.serial  # compares wall-clock overlaps: runs alone
def test_one_job_serialises_builds(project: Project, testbed: Testbed) -> None:
    write_config(project, testbed, unique_namespace(), jobs=1)
    write_layers(project, sleep_s=1)

    rc, report, err = project.cli_json("build", "tools", "other")

    assert rc == 0, err
    spans = sorted((e["started"], e["finished"]) for e in report["layers"]
                   if e["outcome"] == "built")
    assert all(prev_end <= start for (_, prev_end), (start, _) in itertools.pairwise(spans))


@pytest.mark.parametrize("backend", ["buildah", "buildkit"])
def test_credentials_are_used_and_never_written_anywhere(
    project: Project, testbed: Testbed, backend: str
) -> None:
    write_config(project, testbed, unique_namespace(), backend,
                 registry=testbed.auth_registry, auth_file=testbed.auth_file)
    project.layer("base", 'from = "upstream:seed"\n')
    project.layer("child", 'from = "base"\n')

    rc, report, err = project.cli_json("build")
    assert rc == 0, err
    assert built(report) == {"base", "child"}
    rc, report, err = project.cli_json("build")  # lookups authenticate too
    assert rc == 0 and built(report) == set(), err

    secret = testbed.auth_password
    assert secret not in err
    for path in (project.root / "state").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    db = sqlite3.connect(project.root / "state" / "state.db")
    assert secret not in repr(db.execute("SELECT * FROM builds").fetchall())
    # Without the auth file the registry refuses us: the credentials were really used.
    proc = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                           f"http://{testbed.auth_registry}/v2/"], capture_output=True, text=True)
    assert proc.stdout == "401"


def _buildah_processes() -> list[str]:
    out = subprocess.run(["pgrep", "-a", "buildah"], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if "bud" in line]


@pytest.mark.serial  # counts buildah's working containers machine-wide: runs alone
def test_interrupt_stops_the_builder_and_tags_nothing(
    project: Project, testbed: Testbed
) -> None:
    namespace = unique_namespace()
    write_config(project, testbed, namespace)
    project.layer("slow", 'from = "upstream:seed"\ntags = ["1"]\n',
                  "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo started; sleep 60\nUSER 1000\n")
    containers_before = {c["id"] for c in _working_containers()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "-c", str(project.config), "build"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=project.root,
        # As at a terminal: a test run started in the background (nohup, `cmd &` in
        # a script) hands its children SIGINT ignored, and Ctrl-C would not reach it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    logs = project.root / "state" / "logs"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any("started" in p.read_text() for p in logs.glob("*.log")) if logs.exists() else False:
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the build never started")

    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)

    assert proc.returncode == 130, err
    assert not [p for p in _buildah_processes() if str(project.root) in p]
    # buildah stopped while it sets up the RUN leaves its working container: the
    # run removes it before it exits.
    assert {c["id"] for c in _working_containers()} <= containers_before
    assert manifest_digest(testbed.registry, f"{namespace}/slow", "1") is None
    db = sqlite3.connect(project.root / "state" / "state.db")
    assert db.execute("SELECT outcome FROM builds").fetchall() == [("cancelled",)]
    assert db.execute("SELECT count(*) FROM layers").fetchone() == (0,)


def _working_containers() -> list[dict[str, object]]:
    out = subprocess.run(["buildah", "containers", "--json"], capture_output=True, text=True,
                         check=True)
    return [c for c in json.loads(out.stdout or "[]") or [] if c.get("builder")]


def test_a_killed_build_command_leaves_nothing_the_next_one_does_not_clear(
    project: Project, testbed: Testbed
) -> None:
    """kill -9 of ``orchestrator build``: its builder dies with it (no process
    left), and the next run records the build as interrupted, removes the
    working container it left in buildah's store, and builds."""
    namespace = unique_namespace()
    write_config(project, testbed, namespace)
    project.layer("slow", 'from = "upstream:seed"\ntags = ["1"]\n',
                  "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo started; sleep 60\nUSER 1000\n")
    before = {c["id"] for c in _working_containers()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "-c", str(project.config), "build"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=project.root,
    )
    logs = project.root / "state" / "logs"
    deadline = time.monotonic() + 60
    while not (logs.exists() and any("started" in p.read_text() for p in logs.glob("*.log"))):
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the build never started")
        time.sleep(0.2)
    proc.kill()
    proc.communicate(timeout=30)

    deadline = time.monotonic() + 10
    while [p for p in _buildah_processes() if str(project.root) in p]:
        assert time.monotonic() < deadline, _buildah_processes()
        time.sleep(0.1)
    # Whether buildah left its container depends on where the kill caught it; to
    # test the clean-up for certain, leave what a dead bud leaves: a container
    # made from the pinned parent, and one made from a cached step image of it.
    db = sqlite3.connect(project.root / "state" / "state.db")
    (parent,) = db.execute("SELECT base_ref FROM builds WHERE outcome = 'running'").fetchone()
    buildah = ["buildah"]
    subprocess.run([*buildah, "from", "--pull-never", parent], check=True, capture_output=True)
    leftover = project.root / "leftover"
    leftover.mkdir()
    (leftover / "Dockerfile").write_text(f"FROM {parent}\nRUN echo {namespace}\nRUN exit 3\n")
    subprocess.run([*buildah, "bud", "--layers", "--pull-never", str(leftover)],
                   capture_output=True)
    unrelated = subprocess.run([*buildah, "from", "scratch"],
                               check=True, capture_output=True, text=True).stdout.strip()
    left = {c["id"] for c in _working_containers()
            if c["containername"] != unrelated} - before
    assert len(left) >= 2

    project.layer("slow", 'from = "upstream:seed"\ntags = ["1"]\n',
                  "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo quick\nUSER 1000\n")
    rc, report, err = project.cli_json("build")
    assert rc == 0 and outcomes(report) == {"slow": "built"}, err
    now = {c["id"]: c for c in _working_containers()}
    try:
        assert not left & set(now), [now[i] for i in left & set(now)]
        assert unrelated in {c["containername"] for c in now.values()}  # not ours: kept
    finally:
        subprocess.run([*buildah, "rm", unrelated], capture_output=True)
    assert [row[0] for row in db.execute("SELECT outcome FROM builds ORDER BY started_at")] \
        == ["interrupted", "built"]
