"""The shipped layers/ and config.toml: shape, policy, planning, helper scripts.

This host reaches neither Docker Hub nor GitHub, so upstreams are stood in for
at the resolution seam and builds by a builder that only remembers tags; the
catalog itself (files, templates, matrix, Dockerfiles) is the real one.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

import orchestrator.build.runs as runs
from orchestrator.build.state.db import Database
from orchestrator.cli.main import main
from orchestrator.core.model import BuilderSpec, Outcome
from tests.fakes import MemoryBuilder, fixed_upstreams

ROOT = Path(__file__).resolve().parents[2]
HELPERS = ROOT / "layers" / "pyenv" / "bin"
UPSTREAMS = {"alpine": ("3.20.3", "sha256:" + "a" * 64),
             "pyenv": ("v2.4.17", "b" * 40),
             "pyenv-virtualenv": ("v1.2.4", "c" * 40)}


@pytest.fixture
def shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, MemoryBuilder]:
    shutil.copytree(ROOT / "layers", tmp_path / "layers")
    config = (ROOT / "config.toml").read_text()
    # Local mode and a private state dir; everything else as shipped.
    config = re.sub(r"\[registry\][^\[]*", "", config)
    config = config.replace('dir = "/var/lib/orchestrator"', 'dir = "state"')
    (tmp_path / "config.toml").write_text(config)
    builder = MemoryBuilder()
    monkeypatch.setattr(runs, "resolve_all", fixed_upstreams(UPSTREAMS))
    monkeypatch.setattr(runs, "make_builders",
                        lambda *a, **k: [(BuilderSpec("memory", "buildah"), builder)])
    return tmp_path / "config.toml", builder


def test_graph_shows_the_hierarchy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", str(ROOT / "config.toml"), "graph"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "alpine  (from upstream:alpine)",
        "└── pyenv",
        "    ├── python:3.12.8",
        "    ├── python:3.13.5",
        "    │   └── flask",
        "    │       └── flask-helloworld",
        "    └── python:3.14.0",
    ]


def test_shipped_catalog_passes_lint(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", str(ROOT / "config.toml"), "lint"]) == 0
    assert "0 errors, 0 warnings" in capsys.readouterr().out


def test_plan_resolves_templates_from_upstreams(shipped: tuple[Path, MemoryBuilder]) -> None:
    config_path, _ = shipped
    config, catalog = runs.load(config_path)
    report = asyncio.run(runs.execute(config, catalog, dry_run=True))
    assert [lid for lid, r in report.results.items() if r.value and r.value.decision.build] \
        == list(catalog.layers)
    assert dict(catalog.layers["pyenv"].args) == {
        "PYENV_GIT": "{upstream.pyenv.url}",
        "PYENV_VERSION": "{upstream.pyenv.tag}",
        "PYENV_COMMIT": "{upstream.pyenv.digest}",
        "PYENV_VIRTUALENV_GIT": "{upstream.pyenv-virtualenv.url}",
        "PYENV_VIRTUALENV_VERSION": "{upstream.pyenv-virtualenv.tag}",
        "PYENV_VIRTUALENV_COMMIT": "{upstream.pyenv-virtualenv.digest}"}


def test_both_catalogs_use_the_same_helpers() -> None:
    """The example's pyenv layer builds from the shipped layer's helpers (its
    context), so what the tests prove about them is what ships."""
    import orchestrator.build.runs as runs_module
    from orchestrator.catalog.context import read_context

    _, example = runs_module.load(ROOT / "examples" / "debian" / "config.toml")
    pyenv = example.layers["pyenv"]
    assert pyenv.context == ROOT / "layers" / "pyenv"
    sent = {entry.path for entry in read_context(pyenv).files}
    assert sent == {"bin/", "bin/install-python.sh", "bin/install-requirements.sh"}


def test_a_new_python_version_plans_exactly_one_new_variant(
    shipped: tuple[Path, MemoryBuilder]
) -> None:
    config_path, builder = shipped
    config, catalog = runs.load(config_path)
    report = asyncio.run(runs.execute(config, catalog))
    assert report.ok and len(builder.built) == len(catalog.layers)

    toml = config_path.parent / "layers" / "python" / "layer.toml"
    toml.write_text(toml.read_text().replace('"3.14.0"]', '"3.14.0", "3.15.0"]'))
    config, catalog = runs.load(config_path)
    plan = asyncio.run(runs.execute(config, catalog, dry_run=True))
    would_build = {lid: r.value.decision.describe() for lid, r in plan.results.items()
                   if r.value and r.value.decision.build}
    assert would_build == {"python:3.15.0": "never built"}
    assert all(r.outcome is Outcome.REUSED for lid, r in plan.results.items()
               if lid != "python:3.15.0")


def _run(script: str, *args: str, env: dict[str, str] | None = None) -> \
        subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(HELPERS / script), *args], capture_output=True,
                          text=True, env=env or {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})


def test_helpers_are_executable() -> None:
    for script in ("install-python.sh", "install-requirements.sh"):
        assert os.access(HELPERS / script, os.X_OK), script


def test_install_python_usage_errors() -> None:
    for args in ((), ("3.13.5", "extra"), ("latest",)):
        proc = _run("install-python.sh", *args)
        assert proc.returncode == 2 and "usage: install-python.sh VERSION" in proc.stderr


def test_install_python_without_pyenv_fails(tmp_path: Path) -> None:
    proc = _run("install-python.sh", "3.13.5",
                env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 1 and "pyenv not found" in proc.stderr


def test_install_requirements_usage_and_missing_file(tmp_path: Path) -> None:
    proc = _run("install-requirements.sh")
    assert proc.returncode == 2 and "usage: install-requirements.sh" in proc.stderr
    proc = _run("install-requirements.sh", str(tmp_path / "nope.txt"))
    assert proc.returncode == 2 and "no file" in proc.stderr


def test_install_requirements_without_python_fails(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("flask\n")
    empty = tmp_path / "bin"
    empty.mkdir()
    for tool in ("sh", "cat", "ls"):
        found = shutil.which(tool)
        assert found
        (empty / tool).symlink_to(found)
    proc = subprocess.run([str(empty / "sh"), str(HELPERS / "install-requirements.sh"),
                           str(requirements)], capture_output=True, text=True,
                          env={"PATH": str(empty), "HOME": str(tmp_path)})
    assert proc.returncode == 1 and "no Python installed" in proc.stderr


def test_a_build_the_state_cannot_record_fails_and_is_found_next_run(
    shipped: tuple[Path, MemoryBuilder], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last build's finish waits for the run's end to be committed; when the
    database refuses it (a full disk) that build is reported failed, not built,
    and the next run finds its image under its key instead of building again."""
    config_path, builder = shipped
    config, catalog = runs.load(config_path)

    def full(self: Database) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    with monkeypatch.context() as patch:
        patch.setattr(Database, "commit_deferred", full)
        events: list[tuple[str, dict[str, Any]]] = []
        report = asyncio.run(runs.execute(config, catalog,
                                          on_event=lambda e, f: events.append((e, f))))
    failed = report.by_outcome(Outcome.FAILED)
    assert len(failed) == 1 and not report.ok
    (lid,) = failed
    error = str(report.results[lid].error)
    assert "could not record" in error and "disk is full" in error
    assert [f["layer"] for e, f in events if e == "state_write_failed"] == [lid]
    assert len(report.by_outcome(Outcome.BUILT)) == len(catalog.layers) - 1

    again = asyncio.run(runs.execute(config, catalog))
    assert again.ok and again.results[lid].outcome is Outcome.REUSED
    assert len(builder.built) == len(catalog.layers)  # nothing built twice
