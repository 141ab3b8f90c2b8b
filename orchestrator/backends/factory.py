"""Choosing and configuring the backend from config.toml."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from orchestrator.backends.base import Builder
from orchestrator.backends.buildah import BuildahBuilder
from orchestrator.backends.buildkit import BuildctlBuilder, DockerBuildKitBuilder
from orchestrator.backends.runner import CommandRunner, SubprocessRunner
from orchestrator.errors import InputError
from orchestrator.imageref import parse_repository
from orchestrator.model import Config


def insecure_hosts(config: Config) -> set[str]:
    """Registries spoken to over plain HTTP: tls_verify = false in config."""
    hosts = set()
    if config.registry is not None and not config.registry.tls_verify:
        hosts.add(config.registry.host)
    for spec in config.upstreams.values():
        if spec.image and not spec.tls_verify:
            hosts.add(parse_repository(spec.image).registry)
    return hosts


@contextlib.contextmanager
def docker_config_dir(auth_file: Path | None) -> Iterator[Path | None]:
    """Docker-style clients read credentials from $DOCKER_CONFIG/config.json; point
    a private directory's config.json at the configured auth file (a link, so
    no copy of the secret is made)."""
    if auth_file is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="orchestrator-auth-") as tmp:
        Path(tmp, "config.json").symlink_to(auth_file)
        yield Path(tmp)


def make_builder(config: Config, runner: CommandRunner | None = None,
                 docker_config: Path | None = None) -> Builder:
    runner = runner or SubprocessRunner()
    insecure = insecure_hosts(config)
    if config.build.backend == "buildah":
        return BuildahBuilder(config.build.buildah, runner, authfile=config.auth_file,
                              insecure_hosts=insecure)
    if config.build.buildkit.addr is not None:
        if config.registry is None:
            raise InputError(str(config.path), "[build.buildkit] addr: buildctl keeps no local "
                             "images, so a [registry] is required to hand parents to children")
        return BuildctlBuilder(config.build.buildkit, runner, docker_config_dir=docker_config,
                               insecure_hosts=insecure)
    return DockerBuildKitBuilder(config.build.buildkit, runner, docker_config_dir=docker_config)
