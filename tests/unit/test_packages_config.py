"""[packages] in config.toml and [rebuild] packages in layer.toml: parsed, checked, explained."""

from __future__ import annotations

import pytest

from orchestrator.catalog.config import load_config
from orchestrator.catalog.layers import load_catalog
from orchestrator.cli.main import main
from orchestrator.core.errors import InputError
from orchestrator.core.model import PackagesConfig
from tests.conftest import Project

BASE = """
    [catalog]
    layers = "layers"
    [registry]
    url = "127.0.0.1:9/x"
    [state]
    dir = "state"
    [upstream.seed]
    image = "127.0.0.1:9/seed/busybox"
    tag = "1"
"""


def config(project: Project, packages: str) -> PackagesConfig | None:
    project.write_config(BASE + packages)
    return load_config(project.config).packages


def test_off_unless_present_and_on_with_defaults(project: Project) -> None:
    assert config(project, "") is None
    assert config(project, "[packages]\n") == PackagesConfig(
        poll_s=3600.0, only="security", window_s=3600.0, urgent=("critical",), feeds=())


@pytest.mark.parametrize("without", ["[registry]", "[provenance]\nsbom = false",
                                     "[provenance]\nenabled = false"])
def test_package_fixes_need_a_registry_and_sboms(project: Project, without: str) -> None:
    text = BASE.replace('    [registry]\n    url = "127.0.0.1:9/x"\n', "")
    if without != "[registry]":
        text = BASE + "\n" + without + "\n"
    project.write_config(text + "\n[packages]\n")
    with pytest.raises(InputError, match=r"\[packages\]: package fixes need \[registry\] and "
                       r"\[provenance\] with sbom = true"):
        load_config(project.config)


def test_every_setting(project: Project) -> None:
    assert config(project, """
        [packages]
        poll = "30m"
        only = "all"
        window = "0s"
        urgent = ["critical", "high"]
        feeds = ["https://security-tracker.debian.org/tracker/data/json", "osv:Debian",
                 "osv:Alpine"]
    """) == PackagesConfig(1800.0, "all", 0.0, ("critical", "high"), (
        "https://security-tracker.debian.org/tracker/data/json", "osv:Debian", "osv:Alpine"))


@pytest.mark.parametrize(("text", "message"), [
    ('only = "critical"', "packages.only: 'critical': use \"security\""),
    ('poll = "500ms"', "packages.poll: '500ms' is too short: use at least 1s"),
    ('poll = "soon"', "packages.poll:"),
    ('window = "-1h"', "packages.window:"),
    ('urgent = ["urgent"]', "packages.urgent: unknown severity 'urgent' (one of: negligible"),
    ('urgent = "critical"', "packages.urgent:"),
    ('feeds = ["osv:Gentoo"]', "packages.feeds: 'osv:Gentoo': OSV ecosystems are osv:Debian"),
    ('feeds = ["ftp://x"]', "packages.feeds: 'ftp://x': give an http(s):// URL"),
    ('interval = "1h"', "interval"),
])
def test_bad_settings_name_the_field_and_the_fix(project: Project, text: str,
                                                 message: str) -> None:
    with pytest.raises(InputError) as caught:
        config(project, "[packages]\n" + text + "\n")
    assert message in str(caught.value)
    assert str(project.config.name) in str(caught.value)


def test_the_cli_exits_2_with_one_line(project: Project,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    project.write_config(BASE + '[packages]\nonly = "some"\n')
    project.layer("base", 'from = "upstream:seed"\n')
    assert main(["-c", str(project.config), "graph"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "packages.only" in err


def test_a_layer_opts_out(project: Project) -> None:
    project.write_config(BASE + "[packages]\n")
    project.layer("base", 'from = "upstream:seed"\n[rebuild]\npackages = false\n')
    project.layer("child", 'from = "base"\n')
    loaded = load_config(project.config)
    catalog = load_catalog(loaded.layers_dir, loaded.upstreams)
    assert not catalog.layers["base"].rebuild_packages
    assert catalog.layers["child"].rebuild_packages
    project.layer("child", 'from = "base"\n[rebuild]\npackages = "no"\n')
    with pytest.raises(InputError, match=r"rebuild\.packages"):
        load_catalog(loaded.layers_dir, loaded.upstreams)
