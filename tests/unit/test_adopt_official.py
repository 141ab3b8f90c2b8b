"""`orchestrator init` on the official-images layout: docker-library's buildpack-deps and
python trees (tests/fixtures/official-images: their folders and FROM lines, trimmed),
with and without their library files. The hierarchy is found, and the written catalog
loads and plans."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import orchestrator.build.runs as runs
from orchestrator.catalog.adopt import scan
from orchestrator.catalog.adopt_output import summary
from orchestrator.catalog.library import parse_library, read_library
from orchestrator.cli.main import main
from orchestrator.core.errors import InputError
from orchestrator.core.model import BuilderSpec
from tests.fakes import MemoryBuilder, fixed_upstreams
from tests.unit.test_adopt import make_tree

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "official-images"
BUILDPACK_DEPS = FIXTURES / "buildpack-deps"
PYTHON = FIXTURES / "python"
DIGEST = "sha256:" + "b" * 64


def adopt(tmp_path: Path, tree: Path, capsys: pytest.CaptureFixture[str],
          monkeypatch: pytest.MonkeyPatch, *extra: str) -> tuple[str, str, str]:
    """init, graph and plan (upstreams stood in: no registry here); their outputs."""
    out = tmp_path / "catalog"
    assert main(["init", str(tree), "--out", str(out), *extra]) == 0
    printed = capsys.readouterr().out
    config = out / "config.toml"
    config.write_text(config.read_text() + '\n[state]\ndir = "state"\n')
    assert main(["-c", str(config), "graph"]) == 0, capsys.readouterr().err
    graph = capsys.readouterr().out
    upstreams = [line.split("upstream.", 1)[1].rstrip("]")
                 for line in config.read_text().splitlines() if line.startswith("[upstream.")]
    monkeypatch.setattr(runs, "resolve_all", fixed_upstreams(
        dict.fromkeys(upstreams, ("x", DIGEST))))
    monkeypatch.setattr(runs, "make_builders",
                        lambda *a, **k: [(BuilderSpec("memory", "buildah"), MemoryBuilder())])
    assert main(["-c", str(config), "plan"]) == 0, capsys.readouterr().err
    return printed, graph, capsys.readouterr().out


def chains(adoption_summary: str) -> list[str]:
    """The summary's tree lines (up to its notes), stripped of their file names."""
    lines = adoption_summary.splitlines()[1:]
    end = next((i for i, line in enumerate(lines) if not line.startswith(("upstream ", " "))),
               len(lines))
    return [line.split("  (")[0] for line in lines[:end]]


def test_buildpack_deps_curl_scm_and_the_full_image_per_suite(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    printed, graph, plan = adopt(tmp_path, BUILDPACK_DEPS, capsys, monkeypatch)
    # FROM buildpack-deps:bookworm-curl is debian/bookworm/curl: the tag is the tail of
    # the folders, and so every tag is read without its first folder.
    assert chains(printed) == [
        "upstream debian-bookworm: docker.io/library/debian:bookworm",
        "  buildpack-deps-bookworm-curl  buildpack-deps [bookworm-curl]",
        "    buildpack-deps-bookworm-scm  buildpack-deps [bookworm-scm]",
        "      buildpack-deps-bookworm  buildpack-deps [bookworm]",
        "upstream debian-trixie: docker.io/library/debian:trixie",
        "  buildpack-deps-trixie-curl  buildpack-deps [trixie-curl]",
        "    buildpack-deps-trixie-scm  buildpack-deps [trixie-scm]",
        "      buildpack-deps-trixie  buildpack-deps [trixie]",
        "upstream ubuntu: docker.io/library/ubuntu:noble",
        "  buildpack-deps-noble-curl  buildpack-deps [noble-curl]",
        "    buildpack-deps-noble-scm  buildpack-deps [noble-scm]",
        "      buildpack-deps-noble  buildpack-deps [noble]",
    ]
    assert "(read as one repository)" in printed
    assert "buildpack-deps: tags are read without their first folder" in printed
    assert "not matched" not in printed  # the templates at its top are no Dockerfiles
    assert graph.split()[:6] == ["buildpack-deps-bookworm-curl", "(from",
                                 "upstream:debian-bookworm)", "└──",
                                 "buildpack-deps-bookworm-scm", "└──"]
    assert "9 of 9 layers would build" in plan


def test_buildpack_deps_named_by_its_library_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    library = FIXTURES / "library" / "buildpack-deps"
    printed, _, plan = adopt(tmp_path, BUILDPACK_DEPS, capsys, monkeypatch,
                             "--library", str(library))
    lines = chains(printed)
    assert lines[4:8] == [
        "upstream debian-trixie: docker.io/library/debian:trixie",
        "  buildpack-deps-trixie-curl  buildpack-deps [trixie-curl, stable-curl, curl]",
        "    buildpack-deps-trixie-scm  buildpack-deps [trixie-scm, stable-scm, scm]",
        # "latest" is the library's too, but never published
        "      buildpack-deps-trixie  buildpack-deps [trixie, stable]",
    ]
    assert lines[9:11] == [
        "  buildpack-deps-noble-curl  buildpack-deps [noble-curl, 24.04-curl]",
        "    buildpack-deps-noble-scm  buildpack-deps [noble-scm, 24.04-scm]"]
    assert "Tags jammy-curl, 22.04-curl: the tree has no ubuntu/jammy/curl/Dockerfile" \
        in printed
    assert "9 of 9 layers would build" in plan
    toml = (tmp_path / "catalog" / "layers" / "buildpack-deps-bookworm-scm" /
            "layer.toml").read_text()
    assert 'tags = ["bookworm-scm", "oldstable-scm"]' in toml
    assert ('# platforms = ["linux/amd64", "linux/arm/v7", "linux/arm64", "linux/386", '
            '"linux/ppc64le"]') in toml


def test_python_builds_on_external_bases_named_as_upstreams(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    printed, _, plan = adopt(tmp_path, PYTHON, capsys, monkeypatch)
    assert chains(printed)[:6] == [
        "upstream alpine: docker.io/library/alpine:3.22, track suggestion: semver:~3",
        "  python-3.12-alpine3.22  python [3.12-alpine3.22]",
        "  python-3.13-alpine3.22  python [3.13-alpine3.22]",
        "upstream buildpack-deps-bookworm: docker.io/library/buildpack-deps:bookworm",
        "  python-3.12-bookworm  python [3.12-bookworm]",
        "  python-3.13-bookworm  python [3.13-bookworm]",
    ]
    config = (tmp_path / "catalog" / "config.toml").read_text()
    assert '[upstream.buildpack-deps-bookworm]\nimage = "docker.io/library/buildpack-deps"\n' \
           'tag = "bookworm"\nnames = ["buildpack-deps:bookworm"]' in config
    assert '[upstream.servercore]\nimage = "mcr.microsoft.com/windows/servercore"' in config
    assert "9 of 9 layers would build" in plan


def test_python_named_by_its_library_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    printed, _, plan = adopt(tmp_path, PYTHON, capsys, monkeypatch,
                             "--library", str(FIXTURES / "library" / "python"))
    assert ("  python-3.13-bookworm  python [3.13.5-bookworm, 3.13-bookworm, 3-bookworm, "
            "bookworm]") in chains(printed)
    # 3.12's SharedTags belong to 3.12/trixie alone; 3.13's are shared with Windows.
    assert "  python-3.12-trixie  python [3.12.11-trixie, 3.12-trixie, 3.12.11, 3.12]" \
        in chains(printed)
    assert "  python-3.13-trixie  python [3.13.5-trixie, 3.13-trixie, 3-trixie, trixie]" \
        in chains(printed)
    assert ("SharedTags 3.13.5, 3.13, 3 not written: 3.13/trixie/Dockerfile and "
            "3.13/windows/windowsservercore-ltsc2022/Dockerfile share them") in printed
    assert "Architectures: windows-amd64: no Linux platform" in printed
    assert "9 of 9 layers would build" in plan


def test_buildpack_deps_and_python_side_by_side_make_one_hierarchy(tmp_path: Path) -> None:
    tree = tmp_path / "images"
    shutil.copytree(BUILDPACK_DEPS, tree / "buildpack-deps")
    shutil.copytree(PYTHON, tree / "python")
    adoption = scan(tree)
    assert adoption.layer("python-3.13-bookworm").parent == "buildpack-deps-bookworm"
    assert adoption.layer("buildpack-deps-bookworm").tags == ("bookworm",)
    assert adoption.layer("python-3.13-slim-bookworm").upstream == "debian-bookworm-slim"
    assert adoption.unmatched == ()


# -- what init cannot match, it lists with the line that fixes it ----------------------


def test_an_ambiguous_tail_is_reported_not_guessed(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    tree = make_tree(tmp_path / "buildpack-deps", {
        "debian/bookworm/curl/Dockerfile": "FROM debian:bookworm\n",
        "debian/trixie/curl/Dockerfile": "FROM debian:trixie\n",
        "debian/trixie/scm/Dockerfile": "FROM buildpack-deps:curl\n",
    })
    adoption = scan(tree)
    scm = adoption.layer("buildpack-deps-debian-trixie-scm")
    assert (scm.parent, scm.upstream) == (None, "buildpack-deps")  # the published image
    [item] = adoption.unmatched
    assert item.where == "debian/trixie/scm/Dockerfile:1"
    assert item.what == (
        "FROM buildpack-deps:curl could be debian/bookworm/curl/Dockerfile "
        "(buildpack-deps-debian-bookworm-curl) or debian/trixie/curl/Dockerfile "
        "(buildpack-deps-debian-trixie-curl); read as the published image, upstream "
        "'buildpack-deps'")
    assert item.fix == ('layers/buildpack-deps-debian-trixie-scm/layer.toml: '
                        'from = "buildpack-deps-debian-bookworm-curl"   '
                        '(or "buildpack-deps-debian-trixie-curl")')
    assert "not matched (1), each with the line that fixes it:" in summary(adoption)
    # The catalog loads as written; with the fix line it builds on the tree's own image.
    out = tmp_path / "catalog"
    assert main(["init", str(tree), "--out", str(out)]) == 0
    toml = out / "layers" / "buildpack-deps-debian-trixie-scm" / "layer.toml"
    text = toml.read_text()
    assert '# from = "buildpack-deps-debian-trixie-curl"   # if FROM buildpack-deps:curl' \
        in text
    assert main(["-c", str(out / "config.toml"), "graph"]) == 0
    toml.write_text(text.replace('from = "upstream:buildpack-deps"',
                                 'from = "buildpack-deps-debian-trixie-curl"', 1))
    capsys.readouterr()
    assert main(["-c", str(out / "config.toml"), "graph"]) == 0
    assert "buildpack-deps-debian-trixie-curl  (from upstream:debian-trixie)\n" \
           "└── buildpack-deps-debian-trixie-scm" in capsys.readouterr().out


def test_what_init_cannot_match_is_listed_with_its_fix(tmp_path: Path) -> None:
    adoption = scan(make_tree(tmp_path / "src", {
        "base/1.0/Dockerfile": "FROM alpine:3.20\n",
        "app/Dockerfile": "FROM acme/base:2.0\n",  # the tree's image, a tag it lacks
        "legacy/Dockerfile": "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n",
        "rootfs/Dockerfile": "FROM scratch\nADD rootfs.tar /\n",
        "tool/Dockerfile": "FROM golang:1.22\n",  # from elsewhere: an upstream, fine
    }))
    listed = {item.where: (item.what, item.fix) for item in adoption.unmatched}
    assert listed == {
        "app/Dockerfile:1": (
            "FROM acme/base:2.0 names base, an image of this tree, by a tag none of its "
            "Dockerfiles has (base-1.0); read as the published image, upstream 'base'",
            'layers/app/layer.toml: from = "base-1.0"'),
        "legacy/Dockerfile:2": (
            listed["legacy/Dockerfile:2"][0],  # the parser's words, checked below
            'layers/legacy/layer.toml: from = "LAYER"   (or "upstream:NAME")'),
        "rootfs/Dockerfile:1": (
            "FROM scratch: a layer needs a parent to build on",
            "rm -r layers/rootfs   (or build it elsewhere and name it as an [upstream])"),
    }
    assert listed["legacy/Dockerfile:2"][0].startswith("FROM ${BASE_IMAGE}: ")
    assert "BASE_IMAGE" in listed["legacy/Dockerfile:2"][0][len("FROM ${BASE_IMAGE}"):]


def test_a_library_file_that_is_not_one_is_a_clear_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def error(text: str) -> str:
        with pytest.raises(InputError) as caught:
            parse_library(text, "library/x", "x")
        return str(caught.value)

    assert error("") == "library/x: empty: a library file has a global entry " \
                        "(Maintainers, GitRepo) and one entry per Dockerfile (Tags, Directory)"
    assert error("Maintainers: a (@a)\n\nTags: 1\nDirectory 1\n").startswith(
        "library/x:3: not a 'Field: value' line")
    assert error("Maintainers: a (@a)\n\nDirectory: 1\n").startswith(
        "library/x:3: an entry without Tags")
    assert "already published by the entry at line 3" in error(
        "Maintainers: a (@a)\n\nTags: 1, one\nDirectory: 1\n\nTags: 1\nDirectory: 2\n")
    assert "leaves the repository" in error("Maintainers: a\n\nTags: 1\nDirectory: ../up\n")
    assert error("Maintainers: a\n\nTags: bad tag!\n").startswith("library/x:3: tag 'bad tag!'")
    with pytest.raises(InputError, match="not an image name"):
        parse_library("Maintainers: a\n\nTags: 1\n", "library/X Y", "X Y")
    # Global defaults, continuation lines, comments, per-architecture fields.
    library = parse_library(
        "# generated\nMaintainers: a (@a),\n  b (@b)\nArchitectures: amd64, arm64v8\n"
        "GitRepo: https://example.com/x.git\n\n# an entry\nTags: 1.2.3, 1.2\n"
        "GitCommit: 0123\nDirectory: 1\nFile: Dockerfile.alt\narm64v8-Directory: 1/arm\n",
        "library/x", "x")
    [entry] = library.entries
    assert (entry.tags, entry.dockerfile.as_posix(), entry.platforms, entry.per_arch) == (
        ("1.2.3", "1.2"), "1/Dockerfile.alt", ("linux/amd64", "linux/arm64"),
        ("arm64v8-directory",))
    assert main(["init", str(tmp_path), "--library", str(tmp_path / "nope")]) == 2
    assert "nope: library file not found" in capsys.readouterr().err
    assert read_library(FIXTURES / "library" / "python").image == "python"
