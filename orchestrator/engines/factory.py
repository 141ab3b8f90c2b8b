"""Choosing and configuring the backend from config.toml."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from orchestrator.core.errors import InputError
from orchestrator.core.imageref import parse_repository
from orchestrator.core.model import BuilderSpec, Config
from orchestrator.engines.base import Builder
from orchestrator.engines.buildah import BuildahBuilder
from orchestrator.engines.buildkit import BuildctlBuilder, DockerBuildKitBuilder
from orchestrator.engines.runner import CommandRunner, SubprocessRunner


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
def docker_config_dir(auth_file: Path | None, parent: Path | None = None
                      ) -> Iterator[Path | None]:
    """Docker-style clients read credentials from $DOCKER_CONFIG/config.json; point
    a private directory's config.json at the configured auth file (a link, so
    no copy of the secret is made). ``parent``: where to make it (the state
    dir's tmp/, which the next start empties after a crash)."""
    if auth_file is None:
        yield None
        return
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="orchestrator-auth-", dir=parent) as tmp:
        Path(tmp, "config.json").symlink_to(auth_file)
        yield Path(tmp)


def make_builder(config: Config, spec: BuilderSpec, runner: CommandRunner | None = None,
                 docker_config: Path | None = None) -> Builder:
    runner = runner or SubprocessRunner(log_cap_bytes=config.daemon.log_max_bytes)
    insecure = insecure_hosts(config)
    if spec.backend == "buildah":
        return BuildahBuilder(config.build.buildah, runner, authfile=config.auth_file,
                              insecure_hosts=insecure, name=spec.name)
    if spec.backend == "buildkit":
        if config.registry is None:
            raise InputError(str(config.path), f"builder {spec.name}: buildctl keeps no local "
                             "images, so a [registry] is required to hand parents to children")
        bk = replace(config.build.buildkit, addr=spec.address, tls=spec.tls)
        return BuildctlBuilder(bk, runner, docker_config_dir=docker_config,
                               insecure_hosts=insecure, name=spec.name)
    docker = replace(config.build.buildkit, docker_host=spec.address)
    return DockerBuildKitBuilder(docker, runner, docker_config_dir=docker_config, name=spec.name)


def make_builders(config: Config, runner: CommandRunner | None = None,
                  docker_config: Path | None = None) -> list[tuple[BuilderSpec, Builder]]:
    """The configured pool (``[[builders]]``, or ``[build] backend`` as a pool of one)."""
    return [(spec, make_builder(config, spec, runner, docker_config))
            for spec in config.builders]
