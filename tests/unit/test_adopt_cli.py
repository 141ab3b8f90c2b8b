"""`orchestrator init` on the seed's Dockerfiles placed verbatim: init, graph, lint and
plan work on the adopted tree and nothing in it is rewritten."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import orchestrator.build.runs as runs
from orchestrator.cli.main import main
from orchestrator.core.model import BuilderSpec
from tests.fakes import MemoryBuilder, fixed_upstreams
from tests.unit.test_adopt import SEED


def tree_of(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_init_graph_lint_and_plan_on_the_seed(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    seed = tmp_path / "relenteny"
    for rel, text in SEED.items():
        (seed / rel).parent.mkdir(parents=True, exist_ok=True)
        (seed / rel).write_text(text)
    before = tree_of(seed)
    catalog = tmp_path / "catalog"
    assert main(["init", str(seed), "--out", str(catalog)]) == 0
    assert "wrote under" in capsys.readouterr().out
    assert tree_of(seed) == before  # nothing of the user's tree is rewritten

    config = catalog / "config.toml"
    assert main(["-c", str(config), "graph"]) == 0
    assert capsys.readouterr().out.split() == [
        "alpine", "(from", "upstream:alpine)", "└──", "pyenv", "└──", "python",
        "└──", "flask", "└──", "flask-helloworld"]

    # The seed runs as root in places; lint says so (errors, exit 2), naming files.
    code = main(["-c", str(config), "lint"])
    out = capsys.readouterr().out
    assert code in (0, 2) and "errors" in out

    # Plan with the alpine upstream stood in (this host reaches no Docker Hub).
    text = config.read_text().replace('dir = "/var/lib/orchestrator"', 'dir = "state"')
    config.write_text(text + '\n[state]\ndir = "state"\n' if "[state]" not in text else text)
    monkeypatch.setattr(runs, "resolve_all", fixed_upstreams(
        {"alpine": ("3.10.2", "sha256:" + "a" * 64)}))
    builder = MemoryBuilder()
    monkeypatch.setattr(runs, "make_builders",
                        lambda *a, **k: [(BuilderSpec("memory", "buildah"), builder)])
    assert main(["-c", str(config), "plan"]) == 0
    plan = capsys.readouterr().out
    for layer in ("alpine", "pyenv", "python", "flask", "flask-helloworld"):
        assert f"{layer}" in plan
    assert "5 of 5 layers would build" in plan
    # Written again into the same place: refused, nothing overwritten.
    assert main(["init", str(seed), "--out", str(catalog)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_a_child_naming_its_parent_by_latest_loads(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # FROM myorg/base is base:latest, a tag nothing publishes: the child builds on the
    # base layer through from = "base", and the catalog loads as written.
    tree = tmp_path / "src"
    for rel, text in {"base/Dockerfile": "FROM alpine:3.20\nUSER 1\n",
                      "app/Dockerfile": "FROM myorg/base\nUSER 1\n",
                      "pinned/Dockerfile": "FROM myorg/base:1.0\nUSER 1\n"}.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    catalog = tmp_path / "catalog"
    assert main(["init", str(tree), "--out", str(catalog)]) == 0
    printed = capsys.readouterr().out
    assert main(["-c", str(catalog / "config.toml"), "graph"]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.split() == [
        "base", "(from", "upstream:alpine)", "├──", "app", "└──", "pinned"]
    assert "base  base [1.0]  (base/Dockerfile)" in printed
    assert 'app/Dockerfile:1 names it myorg/base (latest), a tag nothing publishes: ' \
           'layer \'app\' builds on it through from = "base"' in printed
    assert 'tags = ["1.0"]' in (catalog / "layers" / "base" / "layer.toml").read_text()
    assert 'from = "base"' in (catalog / "layers" / "app" / "layer.toml").read_text()
