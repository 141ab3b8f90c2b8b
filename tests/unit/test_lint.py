"""Image policy: one test per rule, on fixtures that break it."""

from __future__ import annotations

import pytest

from orchestrator.catalog.layers import dockerfile_texts, load_catalog
from orchestrator.catalog.lint import Finding, lint
from orchestrator.cli.main import main
from orchestrator.core.model import UpstreamSpec
from tests.conftest import Project

UPSTREAMS = {"os": UpstreamSpec("os", "registry", image="127.0.0.1:9/os", tag="1")}
GOOD = "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN true\nUSER 1000\n"


def findings(project: Project) -> list[Finding]:
    catalog = load_catalog(project.layers, UPSTREAMS)
    return lint(catalog, dockerfile_texts(catalog))


def rules(project: Project) -> list[tuple[str, str, int]]:
    return [(f.rule, f.level, f.line) for f in findings(project)]


@pytest.fixture
def base(project: Project) -> Project:
    project.layer("base", 'from = "upstream:os"\n', GOOD)
    return project


def test_clean_catalog_has_no_findings(base: Project) -> None:
    base.layer("child", 'from = "base"\ntags = ["1.0"]\n', "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n")
    assert findings(base) == []


def test_root_final_user_is_an_error(base: Project) -> None:
    base.layer("child", 'from = "base"\n', "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nUSER root\n")
    assert rules(base) == [("non-root", "error", 3)]


def test_root_inherited_from_an_upstream_base(project: Project) -> None:
    project.layer("base", 'from = "upstream:os"\n', "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n")
    assert rules(project) == [("non-root", "error", 1)]


def test_allow_root_permits_it(base: Project) -> None:
    base.layer("tools", 'from = "base"\nallow_root = true\n',
               "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nUSER 0\n")
    assert findings(base) == []


def test_first_from_must_use_base_image(base: Project) -> None:
    from orchestrator.core.model import Catalog

    catalog = load_catalog(base.layers, UPSTREAMS)
    texts = dockerfile_texts(catalog)
    # The loader already refuses such a Dockerfile; lint reports it as well when
    # handed one (for example, edited after loading).
    texts["base"] = "FROM debian:12\nUSER 1000\n"
    found = lint(Catalog(catalog.layers, catalog.upstreams), texts)
    assert [(f.rule, f.line) for f in found] == [("base-image", 1)]


def test_latest_tag_is_an_error(base: Project) -> None:
    base.layer("child", 'from = "base"\ntags = ["1.0", "latest"]\n')
    assert ("no-latest", "error", 1) in rules(base)


@pytest.mark.parametrize("line", ["ARG GITHUB_TOKEN", "ENV DB_PASSWORD=x",
                                  'LABEL "my.secret"="x"', "ENV API_SECRET x"])
def test_secret_names_are_errors(base: Project, line: str) -> None:
    base.layer("child", 'from = "base"\n', f"ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}}\n{line}\n")
    assert rules(base) == [("no-secrets", "error", 3)]


def test_apk_add_without_no_cache_warns(base: Project) -> None:
    base.layer("child", 'from = "base"\n',
               "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nUSER root\nRUN apk add curl && \\\n"
               "    apk add --no-cache git\nUSER 1000\n")
    assert rules(base) == [("apk-no-cache", "warning", 4)]


def test_apt_get_without_cleaning_lists_warns(base: Project) -> None:
    base.layer("ok", 'from = "base"\n',
               "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN apt-get update && apt-get install -y "
               "curl && rm -rf /var/lib/apt/lists/*\n")
    base.layer("bad", 'from = "base"\n',
               "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN apt-get update && apt-get install -y "
               "curl\n")
    assert [(f.rule, f.path.parent.name) for f in findings(base)] == [("apt-lists", "bad")]


def test_lint_command_and_build_refuse_on_errors(
    base: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    base.write_config('[catalog]\nlayers = "layers"\n[state]\ndir = "state"\n'
                      '[upstream.os]\nimage = "127.0.0.1:9/os"\ntag = "1"\n')
    base.layer("child", 'from = "base"\ntags = ["latest"]\n')
    assert main(["-c", str(base.config), "lint"]) == 2
    out = capsys.readouterr().out
    assert "layers/child/layer.toml:1: error: tag 'latest' is not allowed" in out
    assert "1 errors, 0 warnings" in out
    assert main(["-c", str(base.config), "build"]) == 2
    assert "policy errors; nothing was built" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["https://ci:glpat-s3cret@git.example/x.git",
                                   "https://ghp_token@github.com/o/x.git",
                                   "https://mirror.example/x?access_token=abc"])
def test_a_credential_in_a_build_arg_is_an_error(base: Project, value: str) -> None:
    base.layer("child", f'from = "base"\n[args]\nREMOTE = "{value}"\n',
               "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nARG REMOTE\n")
    assert rules(base) == [("no-secrets", "error", 1)]
    assert "args.REMOTE carries a credential" in findings(base)[0].message


def test_a_credential_in_an_env_value_is_an_error_and_ssh_logins_are_not(base: Project) -> None:
    base.layer("child", 'from = "base"\n[args]\nREMOTE = "ssh://git@git.example/x.git"\n',
               "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nARG REMOTE\n"
               "ENV MIRROR=https://u:p@mirror.example/simple\n")
    assert rules(base) == [("no-secrets", "error", 4)]


def test_a_user_line_in_a_heredoc_body_is_not_the_image_user(base: Project) -> None:
    """Regression: main's own parser took ``User git`` in a heredoc body for USER."""
    base.layer("child", 'from = "base"\n',
               "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nUSER root\n"
               "RUN <<END-OF-SCRIPT\nUser git\nEND-OF-SCRIPT\n")
    assert rules(base) == [("non-root", "error", 3)]


def test_apt_get_in_a_heredoc_is_checked(base: Project) -> None:
    base.layer("child", 'from = "base"\n',
               "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN <<EOF\napt-get install -y x\nEOF\n"
               "USER 1000\n")
    assert rules(base) == [("apt-lists", "warning", 3)]


def test_other_images_of_a_base_image_dockerfile_are_linted(base: Project) -> None:
    """Regression: a ${BASE_IMAGE} Dockerfile's other images were dropped: neither
    pinned, nor in the key, nor warned about."""
    base.layer("child", 'from = "base"\n',
               "ARG BASE_IMAGE\nFROM ${BASE_IMAGE} AS base\nFROM golang:1.22 AS build\n"
               "FROM base\nCOPY --from=busybox:1.36 /bin/busybox /bin/\n"
               "COPY --from=127.0.0.1:9/os:1 / /\nUSER 1000\n")
    catalog = load_catalog(base.layers, UPSTREAMS)
    assert [(b.text, b.role, b.upstream) for b in catalog.layers["child"].bases] == [
        ("golang:1.22", "external", None), ("busybox:1.36", "external", None),
        ("127.0.0.1:9/os:1", "upstream", "os")]
    assert catalog.layers["child"].parent_by_arg
    assert [(f.rule, f.line) for f in findings(base)] == [
        ("unwatched-base", 3), ("unwatched-base", 5)]
