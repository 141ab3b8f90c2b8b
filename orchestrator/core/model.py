"""The data the orchestrator works on: frozen, plain, and free of I/O."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from orchestrator.core.redact import public_url

UPSTREAM_PREFIX = "upstream:"


@dataclass(frozen=True)
class UpstreamSpec:
    """An input the hierarchy stands on but does not build (``[upstream.NAME]``)."""

    name: str
    kind: Literal["registry", "git"]
    image: str | None = None  # registry upstreams: repository reference
    tag: str | None = None  # follow this tag's digest …
    # What Dockerfiles call it ("debian:bookworm" while the host pulls from a
    # mirror), normalised; FROM lines naming these get this upstream, pinned.
    names: tuple[str, ...] = ()
    track: str | None = None  # … or the newest tag matching "semver[:RANGE]" / "regex:…"
    git: str | None = None  # git upstreams: remote URL
    poll_s: float = 900.0
    tls_verify: bool = True


@dataclass(frozen=True)
class BaseUse:
    """An image a Dockerfile names literally (``FROM debian:bookworm``,
    ``COPY --from=golang:1.22``), and what it stands for here."""

    text: str  # as the FROM/--from names it, ARGs resolved: what named contexts match
    ref: str  # normalised reference: docker.io/library/debian:bookworm
    role: Literal["parent", "upstream", "external"]
    upstream: str | None = None  # for role "upstream": the [upstream.NAME]


@dataclass(frozen=True)
class Layer:
    """One graph node: a layer folder, or one matrix variant of it.

    ``tags`` and ``args`` have matrix values substituted already; placeholders
    naming upstream values (``{upstream.pyenv.tag}``) stay until resolution.
    """

    id: str  # "pyenv" or, for a matrix variant, "python:3.12.7"
    name: str  # folder name
    folder: Path
    dockerfile: Path
    image: str  # repository name under the registry url
    parent: str | None  # id of the parent layer
    upstream: str | None  # name of the upstream root, when from = "upstream:NAME"
    tags: tuple[str, ...] = ()
    args: tuple[tuple[str, str], ...] = ()
    variant: tuple[tuple[str, str], ...] = ()  # this node's matrix values
    rebuild_every_s: float | None = None
    rebuild_packages: bool = True  # [rebuild] packages = false: no rebuilds for package fixes
    allow_root: bool = False
    context_dir: Path | None = None  # ``context = "PATH"``; default: the layer folder
    # Images the Dockerfile names, as known when the catalog loads (a build works
    # them out again with its own args); the parent among them unless the
    # Dockerfile takes it through ARG BASE_IMAGE / FROM ${BASE_IMAGE}.
    bases: tuple[BaseUse, ...] = ()
    # A FROM line names the parent, even when which one depends on an arg filled
    # in at build time (its base is then only in the build's own list).
    parent_in_from: bool = False
    platforms: tuple[str, ...] = ()  # empty: the host's platform
    secrets: tuple[str, ...] = ()  # names of [secrets.NAME] the build may mount

    @property
    def context(self) -> Path:
        return self.context_dir if self.context_dir is not None else self.folder

    @property
    def parent_by_arg(self) -> bool:
        """The parent comes in as the BASE_IMAGE build arg (no FROM names it)."""
        return not self.parent_in_from and not any(b.role == "parent" for b in self.bases)


@dataclass(frozen=True)
class Catalog:
    layers: Mapping[str, Layer]  # by id, in folder order
    upstreams: Mapping[str, UpstreamSpec]


@dataclass(frozen=True)
class RegistryConfig:
    url: str  # "host[:port]/namespace"; images go to <url>/<image>:<tag>
    tls_verify: bool = True
    keep: int | None = None  # key tags kept per layer (retention); None: keep all
    cache: str | None = None  # a repository for the engines' shared build cache

    @property
    def host(self) -> str:
        return self.url.split("/", 1)[0]

    def repository(self, image: str) -> str:
        return f"{self.url.rstrip('/')}/{image}"


@dataclass(frozen=True)
class BuildahConfig:
    command: str = "buildah"
    isolation: str = "chroot"
    storage_driver: str | None = None
    root: str | None = None  # containers-storage graph root (--root)
    runroot: str | None = None
    # buildah's step cache. Off by default: the build key already decides
    # whether a layer builds, and buildah turns every --label into a cached
    # step, which costs more than it saves.
    layers: bool = False


@dataclass(frozen=True)
class BuildKitConfig:
    # With an address, BuildKit is driven through buildctl; otherwise through a
    # Docker CLI that still speaks BuildKit without the buildx plugin.
    buildctl: str = "buildctl"
    addr: str | None = None
    tls: tuple[str, str, str] | None = None  # (CA, client cert, client key) for buildctl
    docker: str = "/usr/bin/docker"
    docker_host: str | None = None


@dataclass(frozen=True)
class BuilderSpec:
    """One build engine of the pool (``[[builders]]``)."""

    name: str
    backend: Literal["buildah", "buildkit", "docker"]  # docker: a Docker engine's BuildKit
    address: str | None = None  # buildctl --addr, or DOCKER_HOST for a Docker engine
    slots: int = 1
    # mTLS to a remote buildkitd: buildctl --tlscacert/--tlscert/--tlskey
    tls: tuple[str, str, str] | None = None


@dataclass(frozen=True)
class BuildConfig:
    backend: Literal["buildah", "buildkit"] = "buildah"
    jobs: int = 2
    timeout_s: float = 3600.0
    label_prefix: str = "dev.orchestrator"
    keep_local: int = 2  # images per layer kept in an engine's local store
    platforms: tuple[str, ...] = ()  # the default platform set; () = this host's platform
    source: str | None = None  # org.opencontainers.image.source; default: the layer folder
    # Which ready build takes a free slot: the one heading the longest chain of
    # expected build times below it, or the first ready.
    order: Literal["critical-path", "fifo"] = "critical-path"
    buildah: BuildahConfig = field(default_factory=BuildahConfig)
    buildkit: BuildKitConfig = field(default_factory=BuildKitConfig)


@dataclass(frozen=True)
class DaemonConfig:
    socket_group: str | None = None  # group owning the control socket (mode 0660)
    debounce_s: float = 0.5  # quiet time after the last save before a build
    drain_s: float = 300.0  # on stop: how long running builds may finish
    # Poll interval for rebuild.every checks.
    schedule_check_s: float = 60.0
    metrics_listen: tuple[str, int] | None = None  # extra TCP listener for GET /metrics
    log_retention_s: float = 30 * 86400.0  # build logs older than this are deleted
    log_max_bytes: int = 64 * 1024 * 1024  # one build log's cap (head and tail kept); 0: none


@dataclass(frozen=True)
class SecretSpec:
    """``[secrets.NAME]``: where a build secret's value comes from. The value is
    read at build time, handed to the engine as a file, and never stored,
    logged, labelled or hashed: only the name is an input."""

    name: str
    file: Path | None = None
    env: str | None = None


NOTIFY_EVENTS = ("build_failed", "image_published", "upstream_changed", "package_fix",
                 "fix_not_applied")


@dataclass(frozen=True)
class NotifyTarget:
    """``[[notify]]``: a webhook that gets a signed JSON POST per event."""

    url: str
    events: tuple[str, ...] = NOTIFY_EVENTS
    secret: str | None = field(default=None, repr=False)  # HMAC-SHA256 key; never logged
    name: str | None = None

    @property
    def identity(self) -> str:
        """What its queued deliveries are stored under: the name, else the URL. It
        survives a reload that keeps it, and a rotated secret (queued deliveries
        are signed with the new one); a name also lets the URL move."""
        return self.name or self.url


@dataclass(frozen=True)
class ProvenanceConfig:
    """``[provenance]``: what is attached to every pushed image."""

    enabled: bool = True  # an in-toto SLSA provenance statement
    sbom: bool = True  # a CycloneDX SBOM read from the image's filesystem
    key: Path | None = None  # PEM private key (ed25519 / ECDSA P-256): sign statements


@dataclass(frozen=True)
class PackagesConfig:
    """``[packages]``: watch the package indexes the images name; rebuild for fixes."""

    poll_s: float = 3600.0
    only: Literal["security", "all"] = "security"
    window_s: float = 3600.0  # fixes within this time make one rebuild per layer
    urgent: tuple[str, ...] = ("critical",)  # severities that skip the window
    feeds: tuple[str, ...] = ()  # advisory feeds: URLs, "osv:Debian", "osv:Alpine"


@dataclass(frozen=True)
class WebConfig:
    """``[web]``: the read-only web page; off when ``listen`` is absent."""

    listen: tuple[str, int] | None = None  # TCP address, loopback unless said otherwise
    token_file: Path | None = None  # a file holding the token that enables actions
    # Names the page answers to besides IP addresses and localhost (a reverse
    # proxy's): any other Host header is refused, so DNS rebinding reads nothing.
    hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    path: Path
    layers_dir: Path
    state_dir: Path
    control_socket: Path
    build: BuildConfig
    registry: RegistryConfig | None
    auth_file: Path | None
    upstreams: Mapping[str, UpstreamSpec]
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    builders: tuple[BuilderSpec, ...] = ()
    provenance: ProvenanceConfig = field(default_factory=ProvenanceConfig)
    secrets: Mapping[str, SecretSpec] = field(default_factory=dict)
    notify: tuple[NotifyTarget, ...] = ()
    # [state] scratch: "auto", "none" or a folder for small build snapshots.
    scratch: str = "auto"
    packages: PackagesConfig | None = None  # None: package fixes are not watched
    web: WebConfig = field(default_factory=WebConfig)


@dataclass(frozen=True)
class FileEntry:
    """One file of a build context as the build key sees it."""

    path: str  # relative, "/"-separated
    mode: int  # permission bits and file type (S_IFMT)
    digest: str  # sha256 of the content, or of the link target for symlinks


@dataclass(frozen=True)
class Inputs:
    """Everything that goes into a layer's build key."""

    dockerfile: str  # sha256 of the Dockerfile
    files: tuple[FileEntry, ...]  # files, links and directories the engine receives
    args: tuple[tuple[str, str], ...]
    parent_digest: str
    # Other images the Dockerfile uses (a builder stage's base, COPY --from):
    # (normalised reference, digest), sorted.
    bases: tuple[tuple[str, str], ...] = ()
    platforms: tuple[str, ...] = ()  # the platform set the layer is built for
    secrets: tuple[str, ...] = ()  # names only: a secret's value is never an input
    # Fixed package versions the layer is (re)built against after a package fix:
    # ("deb:libssl3:amd64", "3.0.16-1~deb12u1"), sorted (core.packagefix.key_pins).
    packages: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ResolvedUpstream:
    name: str
    ref: str  # what a child's BASE_IMAGE names, pinned: repo@sha256:… (registry); the remote (git)
    digest: str  # image digest (registry) or commit (git)
    tag: str | None

    def __post_init__(self) -> None:
        # The one value of an upstream that is stored, shown and handed to builds:
        # a git remote's user:token@ never gets this far, whoever made the value
        # (a poll, or a row an older version stored).
        object.__setattr__(self, "ref", public_url(self.ref))


class Reason(enum.Enum):
    """Why a layer builds; ``value`` is the human wording."""

    NEVER_BUILT = "never built"
    CONTEXT_CHANGED = "context changed"
    ARGS_CHANGED = "build args changed"
    PLATFORMS_CHANGED = "platforms changed"
    SECRETS_CHANGED = "build secrets changed"
    PARENT_REBUILT = "parent rebuilt"
    UPSTREAM_CHANGED = "upstream changed"
    FORCED = "forced"
    SCHEDULED = "scheduled"
    PACKAGE_FIX = "package fix"  # a package the layer installed has a fixed version
    IMAGE_MISSING = "image missing"


class Outcome(enum.Enum):
    BUILT = "built"
    REUSED = "reused"  # an image with the build key already existed
    FAILED = "failed"
    SKIPPED = "skipped"  # an ancestor failed
    CANCELLED = "cancelled"
    # A newer change to the layer or an ancestor is queued: building now would
    # stand on a digest about to be replaced, so the follow-up run does it.
    SUPERSEDED = "superseded"


@dataclass(frozen=True)
class Decision:
    """A plan step: does the layer build, and why (``detail`` adds the path, value…)."""

    layer: str
    build: bool
    reason: Reason | None = None
    detail: str = ""

    def describe(self) -> str:
        if not self.build:
            return "up to date"
        assert self.reason is not None
        return f"{self.reason.value}: {self.detail}" if self.detail else self.reason.value
