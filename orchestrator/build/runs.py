"""Wiring one ``plan`` or ``build`` run: config, catalog, upstreams, backend, state."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from orchestrator.build.pipeline import Pipeline, RunReport, targets, upstreams_used
from orchestrator.build.state import StateStore
from orchestrator.catalog.config import load_config
from orchestrator.catalog.context import read_contexts
from orchestrator.catalog.layers import dockerfile_texts, load_catalog, select
from orchestrator.catalog.lint import lint
from orchestrator.catalog.tomlfile import display
from orchestrator.core import graph
from orchestrator.core.errors import PolicyError
from orchestrator.core.model import Catalog, Config
from orchestrator.engines.factory import docker_config_dir, insecure_hosts, make_builders
from orchestrator.engines.pool import BuilderPool
from orchestrator.engines.runner import CommandRunner
from orchestrator.registry.auth import AuthStore
from orchestrator.registry.client import RegistryClient
from orchestrator.registry.upstream import resolve_all

STATE_DB = "state.db"


def load(config_path: Path) -> tuple[Config, Catalog]:
    config = load_config(config_path)
    return config, load_catalog(config.layers_dir, config.upstreams)


def policy(catalog: Catalog) -> tuple[list[str], list[str]]:
    """(errors, warnings) of the image policy checks, rendered one per line."""
    findings = lint(catalog, dockerfile_texts(catalog))
    render = [(f.level, f.render(display(f.path))) for f in findings]
    return ([line for level, line in render if level == "error"],
            [line for level, line in render if level == "warning"])


def enforce_policy(catalog: Catalog, warn: Callable[[str], None]) -> None:
    """Run before every build: warnings are reported, errors stop it (exit 2)."""
    errors, warnings = policy(catalog)
    for line in warnings:
        warn(line)
    if errors:
        raise PolicyError(errors)


def catalog_revision(layers_dir: Path) -> str | None:
    """The git commit the catalog is checked out at, for the revision label."""
    try:
        out = subprocess.run(["git", "-C", str(layers_dir), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


async def execute(
    config: Config,
    catalog: Catalog,
    *,
    names: list[str] | None = None,
    force: bool = False,
    dry_run: bool = False,
    jobs: int | None = None,
    runner: CommandRunner | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> RunReport:
    selected = select(catalog, names) if names else None
    order = targets(catalog, selected)
    parents = {lid: layer.parent for lid, layer in catalog.layers.items()}
    forced = frozenset(graph.descendants(parents, selected or list(catalog.layers))) \
        if force else frozenset()
    needed = set().union(*(upstreams_used(catalog.layers[lid]) for lid in order))
    contexts = await asyncio.to_thread(read_contexts, (catalog.layers[lid] for lid in order))

    auth = AuthStore.load(config.auth_file)
    async with RegistryClient(auth, insecure=frozenset(insecure_hosts(config))) as client:
        resolved, failed = await resolve_all(config.upstreams, needed, client)
        with docker_config_dir(config.auth_file) as docker_config:
            if jobs is not None and len(config.builders) == 1:
                # --jobs sizes a pool of one; with several engines it caps the total.
                config = replace(config, builders=(replace(config.builders[0], slots=jobs),))
            # Engines are pinged when the first build needs one (a no-op run starts
            # none), and a one-shot run fails at once when none answers.
            pool = BuilderPool(make_builders(config, runner, docker_config), on_event=(
                (lambda event, fields, level: on_event(event, fields)) if on_event else None),
                wait_for_engines=False)
            state = StateStore(config.state_dir / STATE_DB)
            try:
                pipeline = Pipeline(
                    config, catalog, pool, state,
                    client if config.registry is not None else None,
                    resolved, upstream_errors=failed, jobs=jobs, forced=forced,
                    dry_run=dry_run, revision=lambda: catalog_revision(config.layers_dir),
                    contexts=contexts,
                    on_event=on_event,
                )
                return await pipeline.run(order)
            finally:
                state.close()
