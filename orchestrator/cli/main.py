"""The ``orchestrator`` command: argument parsing, output and exit codes.

Exit codes (DESIGN §3): 0 success; 1 a build failed; 2 bad input; 3 no daemon.

Each command imports what it uses when it runs: a ``plan`` in a pre-commit hook
should not pay for loading the daemon, its HTTP server, metrics or rich.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from orchestrator import __version__
from orchestrator.core.errors import BackendError, InputError, OrchestratorError, PolicyError

if TYPE_CHECKING:
    from orchestrator.cli.client import Client
    from orchestrator.core.model import Catalog, Config
    from orchestrator.registry.client import RegistryClient

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_NO_DAEMON = 0, 1, 2, 3


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="orchestrator",
                                  description="Keep a hierarchy of container images built.")
    top.add_argument("-c", "--config", type=Path, default=Path("config.toml"),
                     help="config file (default: ./config.toml)")
    top.add_argument("--version", action="version", version=f"orchestrator {__version__}")
    top.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _catalog_verbs(sub)
    _registry_verbs(sub)
    _daemon_verbs(sub)
    return top


Verbs: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _catalog_verbs(sub: Verbs) -> None:
    """The one-shot verbs over the catalog: plan, build, lint, init, graph."""
    plan = sub.add_parser("plan", help="say what would build and why")
    plan.add_argument("layers", nargs="*", metavar="LAYER")
    plan.add_argument("--force", action="store_true", help="plan as if forced")
    plan.add_argument("--json", action="store_true")

    build = sub.add_parser("build", help="build what is stale (or LAYER… and below)")
    build.add_argument("layers", nargs="*", metavar="LAYER")
    build.add_argument("--force", action="store_true",
                       help="rebuild the named layers (or all) and their descendants")
    build.add_argument("--jobs", "-j", type=int, help="builds at once (default: [build] jobs)")
    build.add_argument("--json", action="store_true")

    sub.add_parser("lint", help="check the image policy (also run before every build)")

    init = sub.add_parser("init", help="write a catalog for an existing tree of Dockerfiles")
    init.add_argument("dir", type=Path, help="the tree to adopt (its files are never edited)")
    init.add_argument("--out", type=Path, default=Path("."),
                      help="where to write config.toml and layers/ (default: here)")
    init.add_argument("--library", type=Path, metavar="FILE",
                      help="an official-images library file (library/<image>): the image's "
                      "name, and each Directory's Tags")

    gr = sub.add_parser("graph", help="print the hierarchy")
    gr.add_argument("--format", choices=["tree", "dot", "json", "svg"], default="tree",
                    help="svg: the web page's picture (needs Graphviz's dot)")


def _registry_verbs(sub: Verbs) -> None:
    """What reads (or prunes) the registry: explain, sbom, gc."""
    explain = sub.add_parser("explain", help="an image's chain of builds and causes, read "
                             "from its provenance in the registry")
    explain.add_argument("image", metavar="IMAGE[:TAG|@DIGEST]")
    explain.add_argument("--verify", type=Path, metavar="KEY",
                         help="a public key (PEM): every statement must verify")
    explain.add_argument("--json", action="store_true")
    sbom = sub.add_parser("sbom", help="an image's attached SBOM, or what changed between two")
    sbom.add_argument("image", metavar="IMAGE[:TAG|@DIGEST]")
    sbom.add_argument("--diff", metavar="OTHER", help="compare with another image: OTHER -> IMAGE")
    sbom.add_argument("--verify", type=Path, metavar="KEY",
                      help="a public key (PEM): only an SBOM a verified statement names")
    sbom.add_argument("--json", action="store_true")

    gc = sub.add_parser("gc", help="apply registry retention now ([registry] keep = N)")
    gc.add_argument("--dry-run", action="store_true", help="say what would go, delete nothing")


def _daemon_verbs(sub: Verbs) -> None:
    """The daemon, and the clients of its control socket."""
    run = sub.add_parser("run", help="the daemon: reconcile, then watch and take triggers")
    run.add_argument("--once", action="store_true",
                     help="reconcile, build what is queued, then exit (for CI)")

    def client(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--socket", type=Path, help="control socket (default: from config)")
        p.add_argument("--json", action="store_true")
        return p

    status = client("status", "what a running daemon is doing")
    status.add_argument("--watch", action="store_true", help="redraw live until Ctrl-C")
    trig = client("trigger", "queue layers for a build")
    trig.add_argument("layers", nargs="+", metavar="LAYER")
    trig.add_argument("--force", action="store_true")
    cancel = client("cancel", "stop a running build")
    cancel.add_argument("id")
    hist = client("history", "past builds")
    hist.add_argument("layer", nargs="?")
    hist.add_argument("--limit", type=int, default=30)
    logs_ = client("logs", "a build's output")
    logs_.add_argument("id")
    logs_.add_argument("-f", "--follow", action="store_true")
    client("reload", "re-read config and layers")


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # here, where a reader that left is still ours to handle
        return code
    except BrokenPipeError:
        return _reader_left()
    except PolicyError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        print(f"orchestrator: {len(exc.lines)} policy errors; nothing was built",
              file=sys.stderr)
        return EXIT_INPUT
    except InputError as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except BackendError as exc:
        print(f"orchestrator: backend: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OrchestratorError as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        if args.command in CLIENT_VERBS:  # `status --watch`, `logs -f`: Ctrl-C is the way out
            return EXIT_OK
        print("orchestrator: interrupted; running builders were stopped", file=sys.stderr)
        return 130


def _reader_left() -> int:
    """stdout's reader has gone (``orchestrator status | head -8``): end quietly,
    as other command-line tools do, with the status a shell gives a tool that
    SIGPIPE ended. stdout now points at /dev/null, so the interpreter's last
    flush has nothing left to fail on."""
    import os
    import signal

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return 128 + signal.SIGPIPE


CLIENT_VERBS = ("status", "trigger", "cancel", "history", "logs", "reload")


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in CLIENT_VERBS:
        return _client(args)
    if args.command == "run":
        return _run_daemon(args)
    if args.command == "gc":
        gc_code: int = _run_interruptible(_gc(args))
        return gc_code
    if args.command in ("explain", "sbom"):
        code: int = _run_interruptible(_papers(args))
        return code
    if args.command == "init":
        return _init(args)
    from orchestrator.build.runs import enforce_policy, load, policy
    from orchestrator.catalog.layers import select
    from orchestrator.cli import render

    config, catalog = load(args.config)
    if args.command == "lint":
        errors, warnings = policy(catalog)
        from orchestrator.build.packagefixes import upgrade_hints

        warnings += upgrade_hints(config, catalog)  # what the daemon's index polls found
        for line in [*errors, *warnings]:
            print(line)
        print(f"{len(errors)} errors, {len(warnings)} warnings")
        return EXIT_INPUT if errors else EXIT_OK
    if args.command == "graph" and args.format == "svg":
        from orchestrator.build.runs import STATE_DB

        print(render.graph_svg(catalog, config.state_dir / STATE_DB))
        return EXIT_OK
    if args.command == "graph":
        out = {"tree": render.graph_tree, "dot": render.graph_dot,
               "json": render.graph_json}[args.format](catalog)
        print(out)
        return EXIT_OK
    if args.command == "build":
        select(catalog, args.layers)  # unknown names first: the plainer mistake
        enforce_policy(catalog, lambda line: print(line, file=sys.stderr))
        if args.jobs is not None and args.jobs < 1:
            raise InputError("--jobs", "must be at least 1")
    return _plan_or_build(args, config, catalog)


def _init(args: argparse.Namespace) -> int:
    from orchestrator.catalog.adopt import scan
    from orchestrator.catalog.adopt_output import write
    from orchestrator.catalog.library import read_library

    if not args.dir.is_dir():
        raise InputError(str(args.dir), "not a folder")
    library = read_library(args.library) if args.library is not None else None
    print(write(scan(args.dir, library), args.out))
    return EXIT_OK


def _plan_or_build(args: argparse.Namespace, config: Config, catalog: Catalog) -> int:
    from orchestrator.build.runs import execute
    from orchestrator.cli import render

    dry_run = args.command == "plan"
    run = functools.partial(execute, config, catalog, names=args.layers, force=args.force,
                            dry_run=dry_run, jobs=getattr(args, "jobs", None))
    if dry_run:
        report = _run_interruptible(run())
    elif not args.json and sys.stderr.isatty() and _live_wanted():
        from orchestrator.cli.watch import build_live

        report = build_live(catalog, args.layers, run, _run_interruptible)
    else:
        from orchestrator.cli.progress import Progress

        # Progress goes to stderr so stdout stays the command's answer.
        progress = Progress(sys.stderr)
        report = _run_interruptible(run(on_event=progress), progress)
    if args.json:
        print(render.report_json(report))
    else:
        print(render.plan_text(report) if dry_run else render.build_text(report))
    if dry_run:
        # A plan answers what would happen; a layer it cannot plan (an upstream
        # never reached) is part of that answer, not a failed command.
        return EXIT_OK
    return EXIT_OK if report.ok else EXIT_FAILED


async def _gc(args: argparse.Namespace) -> int:
    import contextlib

    from orchestrator.build.lock import StateLock
    from orchestrator.build.retention import apply_gc, plan_gc
    from orchestrator.build.runs import STATE_DB, load
    from orchestrator.build.state import AsyncStateStore, StateStore
    from orchestrator.engines.factory import insecure_hosts
    from orchestrator.registry.auth import AuthStore
    from orchestrator.registry.client import RegistryClient

    config, catalog = load(args.config)
    if config.registry is None or config.registry.keep is None:
        raise InputError(str(args.config), "[registry] keep: retention is off; set keep = N "
                         "(key tags kept per layer) to use gc")
    with contextlib.ExitStack() as owned:
        if not args.dry_run:
            # Deleting needs the state dir to itself: a build running meanwhile may
            # make an old key current again. A daemon that owns it applies
            # retention itself, between its runs.
            owned.enter_context(StateLock(config.state_dir).acquire("orchestrator gc"))
        state = AsyncStateStore(StateStore(config.state_dir / STATE_DB))
        try:
            async with RegistryClient(AuthStore.load(config.auth_file),
                                      insecure=frozenset(insecure_hosts(config))) as client:
                plan = await plan_gc(config, catalog, state, client, config.registry.keep)
                print(plan.render())
                if not args.dry_run:
                    removed = await apply_gc(client, plan, state)
                    print(f"deleted {removed} images; the registry's garbage collection "
                          "reclaims their blobs (registry garbage-collect)")
        finally:
            await state.close()
    return EXIT_OK


async def _papers(args: argparse.Namespace) -> int:
    """explain / sbom: read from the registry (auth and plain-HTTP hosts from the
    config when there is one), never from local state."""
    import json

    from orchestrator.registry import explain as papers
    from orchestrator.registry.auth import AuthStore
    from orchestrator.registry.client import RegistryClient

    auth, insecure = AuthStore.empty(), frozenset[str]()
    if Path(args.config).exists():
        from orchestrator.catalog.config import load_config
        from orchestrator.engines.factory import insecure_hosts

        config = load_config(args.config)
        auth, insecure = AuthStore.load(config.auth_file), frozenset(insecure_hosts(config))
    async with RegistryClient(auth, insecure=insecure) as client:
        try:
            if args.command == "explain":
                key = args.verify.read_bytes() if args.verify else None
                chain = await papers.explain(client, args.image, key)
                print(json.dumps([level.as_json() for level in chain], indent=2)
                      if args.json else papers.render(chain))
                return EXIT_OK
            key = args.verify.read_bytes() if args.verify else None
            document = await _sbom_document(client, args.image, key)
            if args.diff is None:
                print(document.decode())
                return EXIT_OK
            from orchestrator.core.sbom import diff, render_diff

            older = await _sbom_document(client, args.diff, key)
            changes = diff(older, document)
            print(json.dumps([c.__dict__ for c in changes], indent=2, default=str)
                  if args.json else (render_diff(changes) or "no change"))
            return EXIT_OK
        except papers.NotFound as exc:
            print(f"orchestrator: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except BrokenPipeError:
            raise  # stdout's reader left: not a key file that cannot be read
        except OSError as exc:
            raise InputError(str(args.verify), f"cannot read: {exc.strerror}") from exc


def _live_wanted() -> bool:
    from orchestrator.cli.live import wanted

    return wanted(sys.stderr)


async def _sbom_document(client: RegistryClient, image: str, key: bytes | None) -> bytes:
    from orchestrator.registry import explain as papers

    repo, digest = await papers.resolve(client, image)
    choice = await papers.sbom_of(client, repo, digest, key)
    if choice.document is None:
        raise papers.NotFound(f"{image}: {choice.problem or 'no SBOM is attached'}")
    document: bytes = choice.document
    return document


def _run_daemon(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from orchestrator.service import logs
    from orchestrator.service.api import ControlServer
    from orchestrator.service.daemon import Daemon
    from orchestrator.service.web.wiring import with_web

    daemon = Daemon(args.config, with_web(ControlServer), once=args.once)
    if args.once and sys.stdout.isatty():
        from orchestrator.cli.live import wanted

        if wanted(sys.stdout):
            from orchestrator.cli.watch import run_once_live

            return run_once_live(daemon, verbose=args.verbose)
    # Logs go to stdout (the journal), one JSON object a line off a TTY.
    logs.configure(sys.stdout, logging.DEBUG if args.verbose else logging.INFO)
    return asyncio.run(daemon.run())


def _run_interruptible(coro: Any, progress: Any = None) -> Any:
    """Run ``coro``; SIGTERM cancels it like Ctrl-C does, so builders are stopped."""
    import asyncio
    import contextlib
    import signal

    # The result leaves through this list, not as the main task's result: when
    # asyncio.run puts SIGINT back it formats the main task, result and all
    # (CPython 3.11): 0.02 s at the end of a 2,000-layer plan, for nothing.
    result: list[Any] = []

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        beat = asyncio.create_task(progress.heartbeat()) if progress is not None else None
        try:
            result.append(await coro)
        except asyncio.CancelledError:
            raise KeyboardInterrupt from None
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
            if beat is not None:
                beat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beat

    asyncio.run(runner())
    return result[0]


async def _status_text(client: Client) -> str:
    from orchestrator.cli.client import render_full_status

    status_code, status = await client.call("GET", "/v1/status")
    layers_code, layers = await client.call("GET", "/v1/layers")
    if status_code != 200 or layers_code != 200:
        bad = status if status_code != 200 else layers
        raise RuntimeError(bad.get("message", bad) if isinstance(bad, dict) else bad)
    return render_full_status(status, layers["layers"])


async def _status(client: Client, watch: bool) -> int:
    try:
        text = await _status_text(client)
    except RuntimeError as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not watch:
        print(text)
        return EXIT_OK
    from orchestrator.cli.watch import watch_status

    await watch_status(client)
    return EXIT_OK


def _socket_path(args: argparse.Namespace) -> Path:
    from orchestrator.catalog.config import DEFAULT_SOCKET, load_config

    if args.socket is not None:
        return Path(args.socket)
    if not Path(args.config).exists():
        return Path(DEFAULT_SOCKET)  # no config here: the packaged default
    # A config that exists but cannot be read is reported (exit 2), never
    # silently replaced by the default socket ("no daemon answers" misleads).
    return load_config(args.config).control_socket


def _client(args: argparse.Namespace) -> int:
    import asyncio

    from orchestrator.cli.client import Client, NoAccess, NoDaemon

    client = Client(_socket_path(args))
    try:
        return asyncio.run(_client_call(client, args))
    except NoDaemon as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return EXIT_NO_DAEMON
    except NoAccess as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return EXIT_FAILED


async def _client_call(client: Client, args: argparse.Namespace) -> int:
    import json

    from orchestrator.cli.client import exit_for, render_history

    if args.command == "logs":
        return await client.stream(f"/v1/builds/{args.id}/log"
                                   + ("?follow=1" if args.follow else ""))
    if args.command == "status" and not args.json:
        return await _status(client, args.watch)
    calls: dict[str, tuple[str, str, dict[str, Any] | None]] = {
        "status": ("GET", "/v1/status", None),
        "trigger": ("POST", "/v1/builds", {"layers": getattr(args, "layers", None),
                                           "force": getattr(args, "force", False)}),
        "cancel": ("POST", f"/v1/builds/{getattr(args, 'id', '')}/cancel", None),
        "history": ("GET", "/v1/builds?limit=" + str(getattr(args, "limit", 30))
                    + (f"&layer={args.layer}" if getattr(args, "layer", None) else ""), None),
        "reload": ("POST", "/v1/reload", None),
    }
    method, path, body = calls[args.command]
    status, data = await client.call(method, path, body)
    code = exit_for(status)
    if code != EXIT_OK:
        message = data.get("message", data) if isinstance(data, dict) else data
        print(f"orchestrator: {message}", file=sys.stderr)
        return code
    if args.json:
        print(json.dumps(data, indent=2))
    elif args.command == "history":
        print(render_history(data["builds"]))
    elif args.command == "trigger":
        print(f"queued {', '.join(data['layers'])} as {data['id']}")
    elif args.command == "cancel":
        print(f"cancelling {args.id}")
    elif args.command == "reload":
        print(f"reloaded: {data['layers']} layers")
    return EXIT_OK
