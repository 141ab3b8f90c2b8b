"""``config.toml``: the build host's settings (DESIGN §1)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal, cast

from orchestrator.catalog.tomlfile import Table, display, read_toml
from orchestrator.core.errors import InputError
from orchestrator.core.imageref import check_repository, normalize
from orchestrator.core.model import (
    NOTIFY_EVENTS,
    BuildahConfig,
    BuildConfig,
    BuilderSpec,
    BuildKitConfig,
    Config,
    DaemonConfig,
    NotifyTarget,
    PackagesConfig,
    ProvenanceConfig,
    RegistryConfig,
    SecretSpec,
    UpstreamSpec,
    WebConfig,
)
from orchestrator.core.platforms import check_platform
from orchestrator.core.versions import check_track

DEFAULT_STATE_DIR = "/var/lib/orchestrator"
DEFAULT_SOCKET = "/run/orchestrator/control.sock"
LOG_CAP_MIN = 64 << 10
DEFAULT_LOG_MAX = 64 * 1024 * 1024  # per build log; the head and the newest tail are kept


def load_config(path: Path) -> Config:
    root = Table(read_toml(path), display(path))
    root.check_keys(["catalog", "registry", "build", "state", "control", "daemon", "metrics",
                     "upstream", "builders", "provenance", "secrets", "notify", "packages",
                     "web"])
    base = path.resolve().parent

    def resolve(p: str) -> Path:
        return (base / p).resolve() if not Path(p).is_absolute() else Path(p)

    catalog = root.table("catalog")
    catalog.check_keys(["layers"])
    registry, auth_file = _registry(root, resolve)
    state = root.table("state")
    state.check_keys(["dir", "log_retention", "log_max_size", "scratch"])
    control = root.table("control")
    control.check_keys(["socket", "group"])
    build = _build(root.table("build"))
    builders = _builders(root, build)
    provenance = _provenance(root.table("provenance"), resolve)
    if len(builders) > 1 and registry is None:
        raise InputError(root.where, "[[builders]]: more than one builder needs a [registry]: "
                         "that is how a parent built on one engine reaches a child built on "
                         "another (pinned by digest)")
    if "packages" in root.data and (registry is None or not provenance.enabled or
                                    not provenance.sbom):
        # Which layer installed what is read when an image is attested in the registry.
        raise InputError(root.where, "[packages]: package fixes need [registry] and "
                         "[provenance] with sbom = true (each image's package record is made "
                         "when it is attested there); add them or remove [packages]")
    return Config(
        path=path.resolve(),
        layers_dir=resolve(catalog.get("layers", str, "layers")),
        state_dir=resolve(state.get("dir", str, DEFAULT_STATE_DIR)),
        scratch=_scratch(state, resolve),
        control_socket=resolve(control.get("socket", str, DEFAULT_SOCKET)),
        build=build,
        registry=registry,
        auth_file=auth_file,
        upstreams=_upstreams(root.table("upstream")),
        builders=builders,
        provenance=provenance,
        secrets=_secrets(root.table("secrets"), resolve),
        notify=_notify(root),
        packages=_packages(root.table("packages")) if "packages" in root.data else None,
        web=_web(root.table("web"), resolve),
        daemon=_daemon(root, state, control),
    )


def _registry(root: Table, resolve: Callable[[str], Path]
              ) -> tuple[RegistryConfig | None, Path | None]:
    """``[registry]`` (absent: images stay in the engine's local store) and its
    auth file."""
    if "registry" not in root.data:
        return None, None
    reg = root.table("registry")
    reg.check_keys(["url", "tls_verify", "auth_file", "keep", "cache"])
    url = reg.require("url", str).strip().rstrip("/")
    if "://" in url or not url:
        raise reg.error("url", "give host[:port]/namespace without a scheme, e.g. "
                        "registry.example:5000/base")
    problem = check_repository(url if "/" in url else f"{url}/x")
    if problem:
        raise reg.error("url", f"{url!r}: {problem}")
    keep = reg.require("keep", int) if "keep" in reg.data else None
    if keep is not None and keep < 1:
        raise reg.error("keep", "must be at least 1 (or leave it out to keep every image)")
    cache = reg.optional_str("cache")
    if cache is not None and (problem := check_repository(cache)):
        raise reg.error("cache", f"{cache!r} is not a repository: {problem}")
    auth_file = resolve(reg.require("auth_file", str)) if "auth_file" in reg.data else None
    return RegistryConfig(url=url, tls_verify=reg.get("tls_verify", bool, True), keep=keep,
                          cache=cache), auth_file


def _provenance(prov: Table, resolve: Callable[[str], Path]) -> ProvenanceConfig:
    prov.check_keys(["enabled", "sbom", "key"])
    key = resolve(prov.require("key", str)) if "key" in prov.data else None
    if key is not None and not key.is_file():
        raise prov.error("key", f"{key} not found: a PEM private key (ed25519 or ECDSA "
                         "P-256), e.g. made with `openssl genpkey -algorithm ed25519`")
    return ProvenanceConfig(enabled=prov.get("enabled", bool, True),
                            sbom=prov.get("sbom", bool, True), key=key)


def _daemon(root: Table, state: Table, control: Table) -> DaemonConfig:
    daemon = root.table("daemon")
    daemon.check_keys(["debounce", "drain_timeout", "schedule_check"])
    metrics = root.table("metrics")
    metrics.check_keys(["listen"])
    return DaemonConfig(
        socket_group=control.optional_str("group"),
        debounce_s=daemon.duration("debounce", 0.5) or 0.0,
        drain_s=daemon.duration("drain_timeout", 300.0) or 0.0,
        schedule_check_s=daemon.duration("schedule_check", 60.0, minimum=1.0) or 60.0,
        metrics_listen=_listen(metrics),
        log_retention_s=state.duration("log_retention", 30 * 86400.0, minimum=60.0)
        or 30 * 86400.0,
        log_max_bytes=_log_cap(state),
    )


SEVERITIES = ("negligible", "low", "medium", "high", "critical")
OSV_ECOSYSTEMS = ("Debian", "Alpine", "Ubuntu")


def _packages(table: Table) -> PackagesConfig:
    """[packages]: on when present; every key optional."""
    table.check_keys(["poll", "only", "window", "urgent", "feeds"])
    # An index changes a few times a day. A mirror on loopback may be polled as often as
    # asked; any other is polled at most once a minute (service/packagewatch.py).
    poll = table.duration("poll", 3600.0, minimum=1.0)
    only = table.get("only", str, "security")
    if only not in ("security", "all"):
        raise table.error("only", f"{only!r}: use \"security\" (a newer version in a "
                          "*-security suite, or one an advisory names) or \"all\" (any "
                          "newer version)")
    window = table.duration("window", 3600.0, minimum=0.0)
    urgent = table.string_list("urgent") if "urgent" in table.data else ["critical"]
    for severity in urgent:
        if severity not in SEVERITIES:
            raise table.error("urgent", f"unknown severity {severity!r} (one of: "
                              f"{', '.join(SEVERITIES)})")
    feeds = table.string_list("feeds")
    for feed in feeds:
        if feed.startswith("osv:"):
            if feed.removeprefix("osv:") not in OSV_ECOSYSTEMS:
                raise table.error("feeds", f"{feed!r}: OSV ecosystems are "
                                  f"{', '.join('osv:' + e for e in OSV_ECOSYSTEMS)}")
        elif not feed.startswith(("http://", "https://")):
            raise table.error("feeds", f"{feed!r}: give an http(s):// URL of an advisory feed "
                              "(e.g. Debian's security tracker JSON) or osv:Debian, osv:Alpine")
    assert poll is not None and window is not None
    return PackagesConfig(poll_s=poll, only=cast(Literal["security", "all"], only),
                          window_s=window, urgent=tuple(dict.fromkeys(urgent)),
                          feeds=tuple(dict.fromkeys(feeds)))


def _scratch(state: Table, resolve: Callable[[str], Path]) -> str:
    """[state] scratch: where small build snapshots go. "auto" (a private folder
    in /dev/shm when that is a tmpfs), "none" (the state dir), or a folder."""
    value = state.get("scratch", str, "auto")
    if value in ("auto", "none"):
        return value
    if not value:
        raise state.error("scratch", '"" is not a folder: say "auto", "none" or a path')
    return str(resolve(value))


def _builders(root: Table, build: BuildConfig) -> tuple[BuilderSpec, ...]:
    """``[[builders]]``, or the single ``[build] backend`` as a pool of one."""
    raw = root.data.get("builders")
    if raw is None:
        if build.backend == "buildah":
            return (BuilderSpec("buildah", "buildah", None, build.jobs),)
        if build.buildkit.addr is not None:
            return (BuilderSpec("buildkit", "buildkit", build.buildkit.addr, build.jobs),)
        return (BuilderSpec("docker", "docker", build.buildkit.docker_host, build.jobs),)
    if not isinstance(raw, list) or not raw:
        raise root.error("builders", "expected one or more [[builders]] tables")
    specs: list[BuilderSpec] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise root.error("builders", "expected [[builders]] tables")
        table = Table(item, root.where, f"builders[{index}].")
        table.check_keys(["name", "backend", "address", "slots", "tls_ca", "tls_cert",
                          "tls_key"])
        backend = table.require("backend", str)
        if backend not in ("buildah", "buildkit", "docker"):
            raise table.error("backend", f"unknown backend {backend!r} (use \"buildah\", "
                              "\"buildkit\" for a buildkitd, or \"docker\" for a Docker engine)")
        address = table.optional_str("address")
        if backend == "buildkit" and address is None:
            raise table.error("address", "a buildkitd needs an address such as "
                              "tcp://buildkitd:1234 or unix:///run/buildkit/buildkitd.sock")
        if backend == "buildah" and address is not None:
            raise table.error("address", "buildah builds on this host; remove the address")
        slots = table.get("slots", int, 1)
        if slots < 1:
            raise table.error("slots", "must be at least 1")
        tls_parts = [table.optional_str(k) for k in ("tls_ca", "tls_cert", "tls_key")]
        tls: tuple[str, str, str] | None = None
        if any(tls_parts):
            if backend != "buildkit" or not all(tls_parts):
                raise table.error("tls_ca", "mTLS to a buildkitd takes all of tls_ca, tls_cert "
                                  "and tls_key (backend = \"buildkit\")")
            tls = (str(tls_parts[0]), str(tls_parts[1]), str(tls_parts[2]))
        name = table.get("name", str, f"{backend}-{index + 1}")
        if any(spec.name == name for spec in specs):
            raise table.error("name", f"{name!r} is used twice")
        specs.append(BuilderSpec(name, cast(Literal["buildah", "buildkit", "docker"], backend),
                                 address, slots, tls))
    return tuple(specs)


NOTIFY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _notify(root: Table) -> tuple[NotifyTarget, ...]:
    raw = root.data.get("notify")
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise root.error("notify", "expected [[notify]] tables with url = …")
    out: list[NotifyTarget] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(raw):
        table = Table(item, root.where, f"notify[{index}].")
        table.check_keys(["name", "url", "events", "secret", "secret_env"])
        name = table.optional_str("name")
        if name is not None and not NOTIFY_NAME.fullmatch(name):
            raise table.error("name", f"{name!r}: use 1-64 letters, digits, '.', '_' or '-'")
        url = table.require("url", str)
        if not url.startswith(("http://", "https://")):
            raise table.error("url", f"{url!r}: give an http:// or https:// URL")
        events = tuple(table.string_list("events")) or NOTIFY_EVENTS
        for event in events:
            if event not in NOTIFY_EVENTS:
                raise table.error("events", f"unknown event {event!r} (one of: "
                                  f"{', '.join(NOTIFY_EVENTS)})")
        secret = table.optional_str("secret")
        env = table.optional_str("secret_env")
        if env is not None:
            # The secret can live in the service's environment rather than in a file.
            secret = os.environ.get(env)
            if secret is None:
                raise table.error("secret_env", f"${env} is not set")
        if not secret:
            # Receivers tell our POSTs from anyone else's by the signature alone.
            raise table.error("secret", 'every delivery is signed: give secret = "…" or '
                              'secret_env = "NAME" (a non-empty value)')
        target = NotifyTarget(url, events, secret, name)
        if target.identity in seen:
            what = f"name {name!r}" if name else "url"
            raise table.error("name" if name else "url",
                              f"{what} is also notify[{seen[target.identity]}]'s: give each "
                              'target its own name = "…"')
        seen[target.identity] = index
        out.append(target)
    return tuple(out)


def _secrets(table: Table, resolve: Callable[[str], Path]) -> dict[str, SecretSpec]:
    out: dict[str, SecretSpec] = {}
    for name in table.data:
        if not isinstance(table.data[name], dict):
            raise table.error(name, "expected a table [secrets.NAME] with file = … or env = …")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise table.error(name, "a secret id is letters, digits, '_', '.' and '-'")
        spec = table.table(name)
        spec.check_keys(["file", "env"])
        file, env = spec.optional_str("file"), spec.optional_str("env")
        if (file is None) == (env is None):
            raise spec.error("file", "give exactly one of file = \"PATH\" or env = \"VAR\"")
        if file is not None and ("," in file or '"' in file):
            # The engines take "--secret id=NAME,src=PATH": a comma would start a field.
            raise spec.error("file", "a path with ',' or '\"' cannot be passed to the engines; "
                             "move or link the file to a plainer path")
        out[name] = SecretSpec(name, resolve(file) if file else None, env)
    return out


def _log_cap(state: Table) -> int:
    """[state] log_max_size: 0 keeps whole logs; a cap must leave room for a head,
    the marker and a tail worth reading."""
    cap = state.size("log_max_size", DEFAULT_LOG_MAX)
    if 0 < cap < LOG_CAP_MIN:
        raise state.error("log_max_size", f"{cap} bytes is too small to keep a log's head "
                          "and tail: use at least 64K, or 0 for no cap")
    return cap


def _web(table: Table, resolve: Callable[[str], Path]) -> WebConfig:
    table.check_keys(["listen", "token_file", "hosts"])
    token = table.optional_str("token_file")
    hosts = tuple(host.lower() for host in table.string_list("hosts"))
    return WebConfig(listen=_listen(table), token_file=resolve(token) if token else None,
                     hosts=hosts)


def _listen(table: Table) -> tuple[str, int] | None:
    """``"127.0.0.1:9464"``, ``"[::1]:9464"`` or a bare port (loopback)."""
    raw = table.optional_str("listen")
    if raw is None:
        return None
    host, sep, port = raw.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", raw
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise table.error("listen", f"expected HOST:PORT such as 127.0.0.1:9464, got {raw!r}")
    return host, int(port)


def _build(table: Table) -> BuildConfig:
    table.check_keys(["backend", "jobs", "timeout", "label_prefix", "source", "buildah",
                      "buildkit", "keep_local", "platforms", "order"])
    backend = table.get("backend", str, "buildah")
    order = table.get("order", str, "critical-path")
    if order not in ("critical-path", "fifo"):
        raise table.error("order", f"unknown order {order!r} (use \"critical-path\": the "
                          "longest chain of expected build times first, or \"fifo\": "
                          "first ready, first built)")
    if backend not in ("buildah", "buildkit"):
        raise table.error("backend", f"unknown backend {backend!r} (use \"buildah\" or "
                          "\"buildkit\")")
    jobs = table.get("jobs", int, 2)
    if jobs < 1:
        raise table.error("jobs", "must be at least 1")
    timeout = table.duration("timeout", 3600.0, minimum=1.0)
    platforms = tuple(dict.fromkeys(table.string_list("platforms")))
    for platform in platforms:
        if problem := check_platform(platform):
            raise table.error("platforms", problem)
    keep_local = table.get("keep_local", int, 2)
    if keep_local < 1:
        raise table.error("keep_local", "must be at least 1: the newest image of a layer "
                          "is what its next build's step cache stands on")
    assert timeout is not None

    ba = table.table("buildah")
    ba.check_keys(["command", "isolation", "storage_driver", "root", "runroot", "layers"])
    bk = table.table("buildkit")
    bk.check_keys(["buildctl", "addr", "docker", "docker_host"])
    return BuildConfig(
        backend=cast(Literal["buildah", "buildkit"], backend),
        jobs=jobs,
        timeout_s=timeout,
        label_prefix=table.get("label_prefix", str, "dev.orchestrator"),
        keep_local=keep_local,
        platforms=platforms,
        order=cast(Literal["critical-path", "fifo"], order),
        source=table.optional_str("source"),
        buildah=BuildahConfig(
            command=ba.get("command", str, "buildah"),
            isolation=ba.get("isolation", str, "chroot"),
            storage_driver=ba.optional_str("storage_driver"),
            root=ba.optional_str("root"),
            runroot=ba.optional_str("runroot"),
            layers=ba.get("layers", bool, False),
        ),
        buildkit=BuildKitConfig(
            buildctl=bk.get("buildctl", str, "buildctl"),
            addr=bk.optional_str("addr"),
            docker=bk.get("docker", str, "/usr/bin/docker"),
            docker_host=bk.optional_str("docker_host"),
        ),
    )


def _upstreams(table: Table) -> dict[str, UpstreamSpec]:
    out: dict[str, UpstreamSpec] = {}
    for name in table.data:
        up = table.table(name)
        if not isinstance(table.data[name], dict):
            raise table.error(name, "expected a table [upstream.NAME]")
        up.check_keys(["image", "git", "tag", "track", "poll", "tls_verify", "names"])
        image, git = up.optional_str("image"), up.optional_str("git")
        if (image is None) == (git is None):
            raise up.error("image", "give exactly one of image = \"repo\" (a registry "
                           "upstream) or git = \"url\" (a git upstream)")
        tag, track = up.optional_str("tag"), up.optional_str("track")
        if image is not None and (tag is None) == (track is None):
            raise up.error("tag", "a registry upstream follows one tag = \"…\" or a "
                           "track = \"semver:RANGE\" policy; give exactly one")
        if git is not None and tag is not None:
            raise up.error("tag", "a git upstream takes track = \"semver\" (or "
                           "\"semver:RANGE\", \"regex:…\"), not tag")
        if track is not None:
            problem = check_track(track)
            if problem:
                raise up.error("track", problem)
        poll = up.duration("poll", 900.0, minimum=1.0)
        names = []
        for written in up.string_list("names"):
            try:
                names.append(normalize(written))
            except ValueError as exc:
                raise up.error("names", f"{written!r} is not an image reference: {exc}") \
                    from None
        if image is not None:
            problem = check_repository(image)
            if problem:
                raise up.error("image", f"{image!r} is not a valid repository: {problem}")
        assert poll is not None
        out[name] = UpstreamSpec(
            name=name,
            kind="registry" if image is not None else "git",
            image=image,
            tag=tag,
            track=track if track is not None or git is None else "semver",
            git=git,
            poll_s=poll,
            tls_verify=up.get("tls_verify", bool, True),
            names=tuple(names),
        )
    return out
