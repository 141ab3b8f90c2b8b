"""Every kind of bad input: exit 2 and one line naming the file and the problem."""

from __future__ import annotations

import os

import pytest

from orchestrator.cli.main import main
from tests.conftest import Project

CONFIG = """
    [catalog]
    layers = "layers"
    [state]
    dir = "state"
    [upstream.seed]
    image = "127.0.0.1:9/seed/busybox"
    tag = "1"
    tls_verify = false
"""


@pytest.fixture
def ok_project(project: Project) -> Project:
    project.write_config(CONFIG)
    project.layer("base", 'from = "upstream:seed"\n')
    project.layer("child", 'from = "base"\n')
    return project


def run(project: Project, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["-c", str(project.config), *args])
    err = capsys.readouterr().err.strip()
    return code, err


def test_valid_project_loads(ok_project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(ok_project, capsys, "graph") == (0, "")


def test_unreadable_toml_names_file_and_line(
    ok_project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    (ok_project.layers / "child" / "layer.toml").write_text('from = "base"\ntags = [oops\n')
    code, err = run(ok_project, capsys, "plan")
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "layers/child/layer.toml:2: invalid TOML" in err


def test_unknown_parent(ok_project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    (ok_project.layers / "child" / "layer.toml").write_text('from = "bsae"\n')
    code, err = run(ok_project, capsys, "plan")
    assert code == 2
    assert "layers/child/layer.toml: from: unknown parent 'bsae'" in err
    assert len(err.splitlines()) == 1


def test_cycle_is_printed(ok_project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    ok_project.layer("a", 'from = "b"\n')
    ok_project.layer("b", 'from = "c"\n')
    ok_project.layer("c", 'from = "a"\n')
    code, err = run(ok_project, capsys, "graph")
    assert code == 2
    assert "dependency cycle: a -> b -> c -> a" in err
    assert len(err.splitlines()) == 1


def test_unknown_layer_on_command_line(
    ok_project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(ok_project, capsys, "build", "nope")
    assert code == 2
    assert "unknown layer 'nope'" in err and "base, child" in err


def test_a_literal_from_must_name_the_declared_parent(
    ok_project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    # Literal FROMs are welcome (existing Dockerfiles), but one that contradicts
    # layer.toml's `from` is a mistake, named with both files.
    (ok_project.layers / "child" / "Dockerfile").write_text("FROM alpine:3.20\nRUN true\n")
    code, err = run(ok_project, capsys, "plan")
    assert code == 2
    assert "layers/child/Dockerfile: line 1: FROM alpine:3.20 does not name base" in err
    assert "layer.toml from" in err


def test_from_names_the_layer_a_tagless_or_alias_from_means(
    ok_project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    # FROM myorg/base is Docker's latest, which no layer publishes: from = "base" says
    # which layer it is (its digest is what the engine gets), as an adopted tree writes.
    (ok_project.layers / "base" / "layer.toml").write_text(
        'from = "upstream:seed"\ntags = ["1.0"]\n')
    for written in ("myorg/base", "base:stable"):
        (ok_project.layers / "child" / "Dockerfile").write_text(f"FROM {written}\nUSER 1\n")
        assert run(ok_project, capsys, "graph") == (0, "")
    # A tag another layer publishes is that layer: from = contradicts it.
    ok_project.layer("other", 'from = "upstream:seed"\nimage = "base"\ntags = ["2.0"]\n')
    (ok_project.layers / "child" / "Dockerfile").write_text("FROM base:2.0\nUSER 1\n")
    code, err = run(ok_project, capsys, "graph")
    assert code == 2 and "FROM base:2.0 does not name base" in err
    # Without from =, the error says which line would name it.
    (ok_project.layers / "child" / "layer.toml").write_text("")
    (ok_project.layers / "child" / "Dockerfile").write_text("FROM myorg/base\nUSER 1\n")
    code, err = run(ok_project, capsys, "graph")
    assert code == 2 and "FROM myorg/base matches no layer or upstream" in err
    assert 'if it is layer base (the image base without that tag), from = "base"' in err


def test_a_literal_parent_that_matches_nothing_says_how_to_watch_it(
    ok_project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    (ok_project.layers / "child" / "layer.toml").write_text("")  # from inferred
    (ok_project.layers / "child" / "Dockerfile").write_text("FROM alpine:3.20\nUSER 1000\n")
    code, err = run(ok_project, capsys, "plan")
    assert code == 2
    assert "FROM alpine:3.20 matches no layer or upstream" in err
    assert '[upstream.alpine] image = "docker.io/library/alpine" tag = "3.20"' in err


def test_dockerfile_must_declare_base_image_arg(
    ok_project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    (ok_project.layers / "child" / "Dockerfile").write_text("FROM ${BASE_IMAGE}\n")
    code, err = run(ok_project, capsys, "plan")
    assert code == 2
    assert "declare ARG BASE_IMAGE before the first FROM" in err


def test_symlink_escaping_the_context(
    ok_project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    os.symlink("/etc/passwd", ok_project.layers / "child" / "passwd")
    code, err = run(ok_project, capsys, "plan")
    assert code == 2
    assert "layers/child/passwd: symlink escapes the build context (-> /etc/passwd)" in err


def test_symlink_inside_the_context_is_fine(
    ok_project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    (ok_project.layers / "child" / "real.txt").write_text("x")
    os.symlink("real.txt", ok_project.layers / "child" / "link.txt")
    assert run(ok_project, capsys, "graph")[0] == 0


def test_bad_duration(ok_project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    ok_project.write_config(CONFIG.replace('tag = "1"', 'tag = "1"\n    poll = "15 minutes"'))
    code, err = run(ok_project, capsys, "graph")
    assert code == 2
    assert "config.toml: upstream.seed.poll: bad duration '15 minutes'" in err


def test_unknown_upstream(ok_project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    (ok_project.layers / "base" / "layer.toml").write_text('from = "upstream:alpine"\n')
    code, err = run(ok_project, capsys, "graph")
    assert code == 2
    assert "unknown upstream 'alpine': add [upstream.alpine] to config.toml" in err


def test_matrix_parent_needs_a_variant(
    ok_project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    ok_project.layer("py", 'from = "base"\n[matrix]\nv = ["3.12", "3.13"]\n')
    ok_project.layer("app", 'from = "py"\n')
    code, err = run(ok_project, capsys, "graph")
    assert code == 2
    assert "'py' is a matrix layer; name one variant (one of: py:3.12, py:3.13)" in err


def test_misspelt_key(ok_project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    (ok_project.layers / "child" / "layer.toml").write_text('from = "base"\ntgas = ["1"]\n')
    code, err = run(ok_project, capsys, "graph")
    assert code == 2
    assert "layers/child/layer.toml: tgas: unknown key" in err


def test_unknown_placeholder(ok_project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    (ok_project.layers / "child" / "layer.toml").write_text('from = "base"\ntags = ["{pyton}"]\n')
    code, err = run(ok_project, capsys, "graph")
    assert code == 2
    assert "unknown placeholder {pyton}" in err


def test_missing_config(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(project, capsys, "graph")
    assert code == 2
    assert "config.toml: file not found" in err


@pytest.mark.parametrize("where", ["/", "../../../../../../../../..", "/proc", "/dev/shm"])
def test_a_context_that_is_the_whole_system_is_refused(
        ok_project: Project, capsys: pytest.CaptureFixture[str], where: str) -> None:
    ok_project.layer("child", f'from = "base"\ncontext = "{where}"\n')
    code, err = run(ok_project, capsys, "lint")
    assert code == 2
    assert "layer.toml: context:" in err and "cannot be a build context" in err


@pytest.mark.parametrize("size", ['"100"', "4096", '"63K"'])
def test_a_log_cap_too_small_to_keep_head_and_tail(
        ok_project: Project, capsys: pytest.CaptureFixture[str], size: str) -> None:
    ok_project.write_config(CONFIG.replace('dir = "state"',
                                           f'dir = "state"\n    log_max_size = {size}'))
    code, err = run(ok_project, capsys, "graph")
    assert code == 2
    assert "config.toml: state.log_max_size:" in err and "at least 64K, or 0" in err


def test_a_build_arg_name_that_would_split(ok_project: Project,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    ok_project.layer("child", 'from = "base"\n[args]\n"X=Y" = "1"\n')
    code, err = run(ok_project, capsys, "lint")
    assert code == 2 and "layer.toml: args.X=Y: not a build-arg name" in err


def test_a_secret_path_that_would_add_engine_fields(
        ok_project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    ok_project.write_config(CONFIG + '    [secrets.pip]\n    file = "/tmp/x,src=/etc/shadow"\n')
    code, err = run(ok_project, capsys, "graph")
    assert code == 2 and "config.toml: secrets.pip.file: a path with ','" in err


def test_a_layer_built_from_nothing_says_how_to_give_it_a_parent(
        ok_project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    ok_project.layer("rootfs", "", "FROM scratch\nCOPY f /\n", files={"f": "x"})
    code, err = run(ok_project, capsys, "plan")
    assert code == 2
    assert "rootfs/Dockerfile: line 1: FROM scratch builds from nothing" in err
    assert "[upstream.NAME]" in err


def test_a_trigger_naming_a_layer_a_hundred_thousand_times_is_cheap(ok_project: Project) -> None:
    import time

    from orchestrator.build.runs import load
    from orchestrator.catalog.layers import select

    for n in range(300):  # every name was compared with every layer
        ok_project.layer(f"l{n:03d}", 'from = "base"\n')
    _, catalog = load(ok_project.config)
    started = time.monotonic()
    assert select(catalog, ["child", "base"] * 100_000) == ["child", "base"]
    assert time.monotonic() - started < 1.0  # was quadratic: 15 s on the event loop


def test_an_empty_scratch_setting_is_refused(ok_project: Project,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    ok_project.write_config(CONFIG.replace('dir = "state"', 'dir = "state"\n    scratch = ""'))
    code, err = run(ok_project, capsys, "graph")
    assert code == 2
    assert "config.toml: state.scratch:" in err and '"auto", "none" or a path' in err


def test_a_link_loop_in_the_layers_folder_is_not_a_layer(
        ok_project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    (ok_project.root / "layers" / "loop").symlink_to("loop")  # ELOOP when followed
    (ok_project.root / "layers" / "gone").symlink_to("nowhere")
    assert run(ok_project, capsys, "graph") == (0, "")
