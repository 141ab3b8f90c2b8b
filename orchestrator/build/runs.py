"""Wiring one ``plan`` or ``build`` run: config, catalog, upstreams, backend, state."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from orchestrator.build.attest import Attestor, AttestSettings
from orchestrator.build.lock import StateLock
from orchestrator.build.pipeline import Pipeline
from orchestrator.build.results import RunReport
from orchestrator.build.scope import targets, upstreams_used
from orchestrator.build.snapshot import own_private_folder, remove_tree, scratch_path
from orchestrator.build.state import AsyncStateStore, StateStore
from orchestrator.catalog.config import load_config
from orchestrator.catalog.context import Context, read_contexts
from orchestrator.catalog.layers import dockerfile_texts, host_platform, load_catalog, select
from orchestrator.catalog.lint import lint
from orchestrator.catalog.tomlfile import display
from orchestrator.core.errors import InputError, OrchestratorError, PolicyError, UpstreamError
from orchestrator.core.model import Catalog, Config, Outcome, ResolvedUpstream
from orchestrator.core.runboard import upstream_value
from orchestrator.engines.emulation import check_emulation
from orchestrator.engines.factory import docker_config_dir, insecure_hosts, make_builders
from orchestrator.engines.pool import BuilderPool
from orchestrator.engines.runner import CommandRunner
from orchestrator.registry.auth import AuthStore
from orchestrator.registry.client import RegistryClient
from orchestrator.registry.upstream import resolve_all

STATE_DB = "state.db"


def load(config_path: Path) -> tuple[Config, Catalog]:
    config = load_config(config_path)
    catalog = load_catalog(config.layers_dir, config.upstreams, config.build.platforms)
    for layer in catalog.layers.values():
        for name in layer.secrets:
            if name not in config.secrets:
                known = ", ".join(sorted(config.secrets)) or "none defined"
                raise InputError(display(layer.folder / "layer.toml"),
                                 f"secrets: {name!r} is not defined: add [secrets.{name}] "
                                 f"with file = … or env = … to {display(config.path)} "
                                 f"(defined: {known})")
    return config, catalog


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


def make_attestor(config: Config, client: RegistryClient) -> Attestor | None:
    """Provenance and SBOMs go to the registry: none without one, or when off."""
    if config.registry is None or not config.provenance.enabled:
        return None
    key = None
    if config.provenance.key is not None:
        try:
            key = config.provenance.key.read_bytes()
        except OSError as exc:
            raise InputError(str(config.provenance.key), f"cannot read: {exc.strerror}") \
                from exc
    packages = None
    if config.provenance.sbom:
        from orchestrator.build.packagestore import PACKAGES_DB, PackageStore

        packages = PackageStore(config.state_dir / PACKAGES_DB, config.daemon.socket_group)
    try:
        return Attestor(client, AttestSettings(True, config.provenance.sbom, key), packages)
    except OrchestratorError as exc:
        raise InputError(str(config.provenance.key), f"[provenance] key: {exc}") from exc


def check_platforms(config: Config, catalog: Catalog) -> None:
    """Multi-platform layers need a registry (they are indexes there) and, on
    engines of this host, QEMU for the platforms the host cannot run."""
    host = host_platform()
    wanted = {p for layer in catalog.layers.values() for p in layer.platforms}
    if wanted == {host}:
        return
    if config.registry is None:
        raise InputError(display(config.path), "[build] platforms: images for several "
                         "platforms are OCI indexes in a registry; add [registry] url = …")
    local = any(spec.backend == "buildah" or (spec.backend == "docker" and (
        spec.address is None or spec.address.startswith("unix://")))
        for spec in config.builders)
    if local:
        check_emulation(wanted, host)


def engine_kinds(config: Config) -> tuple[str, ...]:
    """The kinds of engine the configured builders are (buildah, docker, buildkit):
    they decide which ignore file a context is read with."""
    return tuple(sorted({spec.backend for spec in config.builders}))


def clear_scratch(state_dir: Path, scratch: Path | None = None) -> int:
    """Remove what builds that did not finish left in the state dir (snapshots,
    scratch files, credential links) and in the scratch folder of small
    snapshots (``scratch_path``). Only the owner of the state dir calls it."""
    removed = sum(_empty_folder(state_dir / name) for name in ("builds", "tmp"))
    if scratch is not None and own_private_folder(scratch):
        removed += _empty_folder(scratch)
        with contextlib.suppress(OSError):
            scratch.rmdir()
    return removed


def _empty_folder(folder: Path) -> int:
    """Remove everything in ``folder`` (never through a link); how many entries."""
    if not folder.is_dir():
        return 0
    removed = 0
    for child in folder.iterdir():
        remove_tree(child) if child.is_dir() and not child.is_symlink() \
            else child.unlink(missing_ok=True)
        removed += 1
    return removed


async def recover_interrupted(state: AsyncStateStore,
                              pool: BuilderPool) -> tuple[list[dict[str, Any]], int]:
    """Builds a dead owner of the state dir left 'running' (a kill -9, a power
    cut) are recorded as interrupted, never as built, and the working
    containers their builders left in the engines are removed. Only the owner
    of the state dir calls it. Returns (the interrupted builds, containers removed)."""
    interrupted = await state.history.mark_interrupted()
    base_refs = {b["base_ref"] for b in interrupted if b.get("base_ref")}
    cleaned = 0
    if base_refs:
        for member in pool.members:
            # An engine that does not answer keeps its leftovers for the next
            # owner; it must not stop this one.
            with contextlib.suppress(Exception):
                cleaned += await member.builder.clean_up_after_crash(base_refs)
    return interrupted, cleaned


async def with_last_known(state: AsyncStateStore, resolved: dict[str, ResolvedUpstream],
                          failed: dict[str, UpstreamError],
                          on_event: Callable[[str, dict[str, Any]], None]
                          ) -> dict[str, UpstreamError]:
    """An upstream that cannot be reached now stands at its last known value (a
    registry outage must not stop every layer under it); only one never seen
    stays an error. Says so for each."""
    still: dict[str, UpstreamError] = {}
    for name, error in failed.items():
        known = await state.upstreams.get(name)
        if known is None:
            still[name] = error
            continue
        resolved[name] = ResolvedUpstream(name, known["ref"], known["digest"], known["tag"])
        on_event("upstream_unreachable", {"upstream": name, "error": str(error),
                                          "using": f"last known {known['tag']}@"
                                                   f"{known['digest'][:19]}"})
    return still


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
    emit = on_event or (lambda event, fields: None)
    if not dry_run:
        check_platforms(config, catalog)
    selected = select(catalog, names) if names else None
    order = targets(catalog, selected)
    # Forced: the named layers (or all). Their descendants follow by key: a
    # rebuild that gives the same image (reproducible) stops the cascade there.
    forced = frozenset(selected or catalog.layers) if force else frozenset()
    needed = set().union(*(upstreams_used(catalog.layers[lid]) for lid in order))
    contexts = await asyncio.to_thread(read_contexts, (catalog.layers[lid] for lid in order),
                                       engine_kinds(config))
    for problem in contexts.values():
        if isinstance(problem, InputError):
            raise problem  # bad input stops a one-shot run before anything builds (exit 2)
    # A build owns the state dir for its duration (a plan only reads).
    with contextlib.ExitStack() as owned:
        if not dry_run:
            owned.enter_context(StateLock(config.state_dir).acquire("orchestrator build"))
            await asyncio.to_thread(clear_scratch, config.state_dir,
                                    scratch_path(config.scratch, config.state_dir))
        state = AsyncStateStore(StateStore(config.state_dir / STATE_DB), inline=True)
        try:
            return await _execute(config, catalog, state, order, forced, needed, contexts,
                                  dry_run=dry_run, jobs=jobs, runner=runner, emit=emit,
                                  on_event=on_event)
        finally:
            await state.close()


async def _execute(config: Config, catalog: Catalog, state: AsyncStateStore, order: list[str],
                   forced: frozenset[str], needed: set[str],
                   contexts: dict[str, Context | InputError], *, dry_run: bool,
                   jobs: int | None, runner: CommandRunner | None,
                   emit: Callable[[str, dict[str, Any]], None],
                   on_event: Callable[[str, dict[str, Any]], None] | None) -> RunReport:
    auth = AuthStore.load(config.auth_file)
    async with RegistryClient(auth, insecure=frozenset(insecure_hosts(config))) as client:
        resolved, failed = await resolve_all(config.upstreams, needed, client)
        failed = await with_last_known(state, resolved, failed, emit)
        # For a live view's "upstreams in use" line (progress lines leave it out).
        emit("upstreams_resolved", {"upstreams": {
            name: upstream_value(up.tag, up.digest) for name, up in resolved.items()}})
        with docker_config_dir(config.auth_file, config.state_dir / "tmp") as docker_config:
            if jobs is not None and len(config.builders) == 1:
                # --jobs sizes a pool of one; with several engines it caps the total.
                config = replace(config, builders=(replace(config.builders[0], slots=jobs),))
            # Engines are pinged when the first build needs one (a no-op run starts
            # none), and a one-shot run fails at once when none answers.
            pool = BuilderPool(make_builders(config, runner, docker_config), on_event=(
                (lambda event, fields, level: on_event(event, fields)) if on_event else None),
                wait_for_engines=False)
            if not dry_run:
                interrupted, cleaned = await recover_interrupted(state, pool)
                if interrupted:
                    emit("state_recovered", {"interrupted": [b["id"] for b in interrupted],
                                             "containers_removed": cleaned})
            fixes = None
            if config.packages is not None:
                from orchestrator.build.packagefixes import load_fix_view, plan_notes

                # As the daemon's last polls left them: a one-shot run never polls.
                fixes = await load_fix_view(config, catalog, state)
            pipeline = Pipeline(
                config, catalog, pool, state,
                client if config.registry is not None else None,
                resolved, upstream_errors=failed, jobs=jobs, forced=forced,
                dry_run=dry_run, revision=lambda: catalog_revision(config.layers_dir),
                contexts=contexts, on_event=on_event, resolver=client,
                attestor=None if dry_run else make_attestor(config, client), packages=fixes,
            )
            pipeline.check_tags(order)
            report = await pipeline.run(order)
            if fixes is not None:
                report.packages = plan_notes(fixes, catalog)
            keep = config.registry.keep if config.registry else None
            if keep and not dry_run and report.by_outcome(Outcome.BUILT):
                await apply_retention(config, catalog, state, client, keep, emit)
            return report


async def apply_retention(config: Config, catalog: Catalog, state: AsyncStateStore,
                          client: RegistryClient, keep: int,
                          emit: Callable[[str, dict[str, Any]], None]) -> None:
    """[registry] keep after a build that pushed: never fails the build."""
    from orchestrator.build.retention import apply_gc, plan_gc

    try:
        removed = await apply_gc(client, await plan_gc(config, catalog, state, client, keep),
                                 state)
    except Exception as exc:
        emit("gc_failed", {"error": f"{type(exc).__name__}: {exc}"})
        return
    if removed:
        emit("gc_done", {"removed": removed})
