"""Acceptance: ``orchestrator build`` on a terminal draws the hierarchy live
(tmux is the terminal), and off a terminal its output is what it always was."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import artifacts, html_screenshot
from tests.conftest import ROOT, Project, Testbed, unique_namespace
from tests.integration.hierarchy import write_config

pytestmark = pytest.mark.integration
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def small_hierarchy(project: Project, testbed: Testbed, slow: bool) -> None:
    """base -> mid -> leaf, and other; mid compiles for a few seconds when slow."""
    write_config(project, testbed, unique_namespace())
    project.layer("base", 'from = "upstream:seed"\ntags = ["1.0"]\n')
    work = ("RUN for i in 1 2 3 4 5 6; do echo compiling part $i of 6; sleep 1; done\n"
            if slow else "RUN echo compiled\n")
    project.layer("mid", 'from = "base"\n', "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n"
                  "COPY conf.txt /conf.txt\n" + work + "USER 1000\n",
                  files={"conf.txt": "v1\n"})
    project.layer("leaf", 'from = "mid"\n')
    project.layer("other", 'from = "base"\n')


class Tmux:
    """A terminal of its own (a private tmux server), 110x32."""

    def __init__(self) -> None:
        if shutil.which("tmux") is None:
            pytest.skip("tmux is not installed")
        self.socket = f"orch-test-{uuid.uuid4().hex[:8]}"

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True,
                              text=True, check=True).stdout

    def start(self, command: str, cwd: str) -> None:
        self.tmux("new-session", "-d", "-s", "t", "-x", "110", "-y", "32", "-c", cwd,
                  "env", "-u", "NO_COLOR", "TERM=xterm-256color",
                  f"PYTHONPATH={os.environ.get('PYTHONPATH', ROOT)}", "sh", "-c", command)

    def screen(self, ansi: bool = False) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t", *(["-e"] if ansi else []))

    def wait_for(self, pattern: str, timeout: float) -> str:
        """The screen once ``pattern`` is on it; tmux redraws on every output."""
        deadline = time.monotonic() + timeout
        found = re.compile(pattern)
        while time.monotonic() < deadline:
            screen = self.screen()
            if found.search(screen):
                return screen
            self.tmux("wait-for", "-S", "noop")  # a round trip, not a sleep
            time.sleep(0.05)
        raise AssertionError(f"not on the screen after {timeout}s: {pattern}\n{self.screen()}")

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def terminal() -> Iterator[Tmux]:
    made = Tmux()
    yield made
    made.kill()


def test_build_on_a_terminal_draws_the_tree_live_then_the_summary(
    project: Project, testbed: Testbed, terminal: Tmux
) -> None:
    small_hierarchy(project, testbed, slow=True)
    terminal.start(f"{sys.executable} -m orchestrator -c {project.config} build; "
                   "echo EXIT=$?; sleep 600", str(project.root))
    # Mid-run: mid is building on the engine (a pool of one is named for its
    # backend), with its elapsed time and the builder's last line; leaf waits on
    # it; other (independent) goes its way.
    mid_run = terminal.wait_for(r"mid +● building [1-9]\d*s on buildah", 120)
    assert re.search(r"> compiling part \d of 6", terminal.wait_for(r"> compiling part", 30))
    assert re.search(r"└── leaf +… waiting on mid", mid_run), mid_run
    assert re.search(r"upstreams: seed 1 @ sha256:[0-9a-f]{12}", mid_run), mid_run
    assert re.search(r"4 layers: [12] building.* · \d+s elapsed", mid_run), mid_run
    capture = terminal.screen(ansi=True)
    # At the end: the last frame of the tree, then the summary as it always was.
    end = terminal.wait_for(r"EXIT=\d", 120)
    assert "EXIT=0" in end, end
    assert re.search(r"built +mid +never built; [\d.]+s on buildah", end), end
    assert "4 built, 0 up to date, 0 failed, 0 skipped" in end
    assert re.search(r"mid +✓ built in [\d.]+s on buildah", end), end
    out = artifacts()
    (out / "terminal-mid-run.ansi").write_text(capture)
    terminal_picture(capture, out / "terminal.png")


def terminal_picture(capture: str, path: os.PathLike[str] | str) -> None:
    """The tmux screen, colours and all, as a PNG: rich draws the ANSI capture
    as a terminal window (SVG), Chromium takes its picture."""
    from io import StringIO

    from rich.console import Console
    from rich.text import Text

    console = Console(record=True, width=96, file=StringIO(), force_terminal=True,
                      color_system="truecolor")
    console.print(Text.from_ansi(capture.rstrip("\n")))
    svg = console.export_svg(title="orchestrator build")
    html_screenshot(f"<html><body style='margin:0'>{svg}</body></html>", Path(path), width=900,
                    element="svg")


def test_build_off_a_terminal_prints_what_it_always_did(
    project: Project, testbed: Testbed
) -> None:
    small_hierarchy(project, testbed, slow=False)
    proc = project.cli("build")
    assert proc.returncode == 0, proc.stderr
    assert not ANSI.search(proc.stdout + proc.stderr)
    events = [json.loads(line) for line in proc.stderr.splitlines()]  # JSON lines only
    assert all({"timestamp", "level", "event"} <= set(e) for e in events)
    # The live view's own events never reach these lines.
    assert not {e["event"] for e in events} & {"upstreams_resolved", "layer_up_to_date"}
    assert sorted(e["layer"] for e in events if e["event"] == "build_started") == \
        ["base", "leaf", "mid", "other"]
    lines = proc.stdout.splitlines()
    assert sorted(tuple(line.split()[:2]) for line in lines[:-1]) == [
        ("built", "base"), ("built", "leaf"), ("built", "mid"), ("built", "other")]
    assert lines[-1] == "4 built, 0 up to date, 0 failed, 0 skipped"


def test_run_once_on_a_terminal_draws_the_daemons_run(
    project: Project, testbed: Testbed, terminal: Tmux
) -> None:
    small_hierarchy(project, testbed, slow=True)
    with project.config.open("a") as fh:
        fh.write('\n[control]\nsocket = "control.sock"\n')
    terminal.start(f"{sys.executable} -m orchestrator -c {project.config} run --once; "
                   "echo EXIT=$?; sleep 600", str(project.root))
    mid_run = terminal.wait_for(r"mid +● building [1-9]\d*s on buildah", 120)
    assert "orchestrator run --once: ready" in mid_run
    assert re.search(r"(base|other) +✓ (built|up to date)", mid_run), mid_run
    end = terminal.wait_for(r"EXIT=\d", 120)
    assert "EXIT=0" in end and "4 built, 0 up to date, 0 failed, 0 skipped" in end, end
    assert '"event"' not in end  # no JSON log lines on the terminal


def test_ctrl_c_leaves_the_terminal_clean(
    project: Project, testbed: Testbed, terminal: Tmux
) -> None:
    small_hierarchy(project, testbed, slow=True)
    # (The shell traps Ctrl-C so that it lives to print the exit code.)
    terminal.start(f"trap true INT; {sys.executable} -m orchestrator -c {project.config} "
                   "build; echo EXIT=$?; sleep 600", str(project.root))
    terminal.wait_for(r"> compiling part", 120)
    terminal.tmux("send-keys", "-t", "t", "C-c")
    end = terminal.wait_for(r"EXIT=\d+", 60)
    assert "EXIT=130" in end and "interrupted; running builders were stopped" in end, end
    # The cursor is back, and the prompt's line is not glued to the tree's.
    assert terminal.tmux("display-message", "-p", "-t", "t", "#{cursor_flag}").strip() == "1"
    assert re.search(r"^EXIT=130$", end, re.MULTILINE), end
