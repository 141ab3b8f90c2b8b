"""Image references as registries see them, and the grammar they must follow. Pure.

``alpine`` means ``docker.io/library/alpine:latest``; a first component with a
"." or ":" (or "localhost") is a registry host. The grammar is Docker's
reference grammar: lower-case path components whose inner separators are ".",
"_", "__" or runs of "-"; tags are 1-128 of ``[A-Za-z0-9_.-]`` not starting
with "." or "-"; digests are ``algorithm:hex``.

Two kinds of callers: Dockerfile analysis reads references the way Docker does
(:func:`parse_reference`), and configuration checks refuse names before they
reach a builder's command line (:func:`check_tag`, :func:`check_repository`,
:func:`check_reference`). The checks return a message or None, so the caller
can add the file and field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DEFAULT_TAG = "latest"
OFFICIAL_NAMESPACE = "library"
# Docker's own limit on "registry/path" (the distribution reference package).
NAME_MAX = 255
TAG_MAX = 128

# The legacy name of Docker Hub means Docker Hub.
_HUB_ALIASES = {"index.docker.io": DOCKER_HUB}

_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN_COMPONENT = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_HOST = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?"
)
_ALGORITHM = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*")
_ENCODED = re.compile(r"[A-Za-z0-9=_-]+")
# Registered algorithms have a fixed length of lower-case hex (OCI image spec).
_HEX_LENGTH = {"sha256": 64, "sha512": 128}


@dataclass(frozen=True)
class ImageRef:
    registry: str  # as written by users: "docker.io", "127.0.0.1:5000"
    repository: str  # "library/alpine", "base/python"

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def at(self, digest: str) -> str:
        return f"{self.name}@{digest}"

    def tagged(self, tag: str) -> str:
        return f"{self.name}:{tag}"


def parse_repository(text: str) -> ImageRef:
    """A repository without tag or digest."""
    first, sep, rest = text.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    else:
        registry, path = DOCKER_HUB, text
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    return ImageRef(registry, path)


@dataclass(frozen=True)
class Reference:
    """A full image reference ``[registry/]path[:tag][@digest]``, normalised.

    ``registry`` is never empty (Docker Hub is ``docker.io``) and official
    images carry their ``library/`` namespace, so equal images compare equal
    however they were written. ``tag`` is None when only a digest was given
    or when nothing was: :meth:`normalized` then says ``latest`` (Docker pulls
    ``latest`` for a bare name).
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def image(self) -> ImageRef:
        return ImageRef(self.registry, self.repository)

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def effective_tag(self) -> str | None:
        """The tag Docker uses: the written one, else ``latest`` unless a digest pins it."""
        if self.tag is not None:
            return self.tag
        return None if self.digest is not None else DEFAULT_TAG

    @property
    def is_official(self) -> bool:
        """A Docker Hub official image (``library/…``), which bare names mean."""
        return self.registry == DOCKER_HUB and self.repository.startswith(
            OFFICIAL_NAMESPACE + "/")

    @property
    def path(self) -> str:
        """The repository as users write it on Docker Hub: no ``library/``."""
        if self.is_official:
            return self.repository[len(OFFICIAL_NAMESPACE) + 1:]
        return self.repository

    def normalized(self) -> str:
        """The matching key: ``docker.io/library/debian:latest`` for ``debian``."""
        tag = self.effective_tag
        text = self.name + (f":{tag}" if tag is not None else "")
        return text + (f"@{self.digest}" if self.digest is not None else "")

    def familiar(self) -> str:
        """The short form Docker prints: ``debian:bookworm``, ``myorg/app:1``."""
        name = self.path if self.registry == DOCKER_HUB else self.name
        text = name + (f":{self.tag}" if self.tag is not None else "")
        return text + (f"@{self.digest}" if self.digest is not None else "")

    def pinned(self, digest: str) -> str:
        """This repository at ``digest``: what a FROM line is rewritten to."""
        return f"{self.name}@{digest}"

    def __str__(self) -> str:
        return self.normalized()


def _split_domain(text: str) -> tuple[str | None, str]:
    """Docker's rule: the first component is a registry when it has "." or ":",
    is "localhost", or has upper-case letters (a path component never does).
    Returns (host as written or None, path)."""
    first, sep, rest = text.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"
                or first.lower() != first):
        return first, rest
    return None, text


def parse_reference(text: str) -> Reference:
    """Parse a reference as Docker reads one. ValueError says what is wrong."""
    problem = _reference_problem(text)
    if problem is not None:
        raise ValueError(problem)
    return _parse_valid(text)


def _parse_valid(text: str) -> Reference:
    rest, _, digest = text.partition("@")
    name, tag = rest, None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        name, tag = rest[:colon], rest[colon + 1:]
    host, path = _split_domain(name)
    registry = DOCKER_HUB if host is None else _HUB_ALIASES.get(host, host)
    if registry == DOCKER_HUB and "/" not in path:
        path = f"{OFFICIAL_NAMESPACE}/{path}"
    return Reference(registry, path, tag, digest or None)


def normalize(text: str) -> str:
    """``parse_reference(text).normalized()``."""
    return parse_reference(text).normalized()


def check_tag(tag: str) -> str | None:
    """None for a valid tag, else why not (OCI distribution tag grammar)."""
    if not tag:
        return "empty tag"
    if len(tag) > TAG_MAX:
        return f"tag is {len(tag)} characters long; at most {TAG_MAX} are allowed"
    bad = _first_bad(tag, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
    if bad is not None:
        return (f"tag {tag!r}: character {bad!r} is not allowed (letters, digits, "
                "'_', '.' and '-' only)")
    if not _TAG.fullmatch(tag):
        return f"tag {tag!r} must start with a letter, digit or '_'"
    return None


def check_repository(name: str) -> str | None:
    """None for a valid repository name (optionally ``host[:port]/`` first), else why not.

    Stricter than Docker in one place: a first component with upper-case letters
    and no "." or ":" is refused, although Docker would take it for a registry
    host, because in a configuration file it is almost always a typo.
    """
    if not name:
        return "empty repository name"
    if len(name) > NAME_MAX:
        return f"repository name is {len(name)} characters long; at most {NAME_MAX} are allowed"
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        if not _HOST.fullmatch(first):
            return f"{name!r}: {first!r} is not a valid registry host[:port]"
        path = rest
    else:
        path = name
    return _path_problem(name, path)


def _path_problem(whole: str, path: str) -> str | None:
    if not path:
        return f"{whole!r}: no repository path after the registry"
    if path != path.lower():
        return (f"{whole!r}: repository names must be lower-case "
                f"({path.lower()!r} would do)")
    for component in path.split("/"):
        if not component:
            return f"{whole!r}: empty path component (a leading, trailing or doubled '/')"
        if _PATH_COMPONENT.fullmatch(component):
            continue
        bad = _first_bad(component, "abcdefghijklmnopqrstuvwxyz0123456789._-")
        if bad is not None:
            return (f"{whole!r}: character {bad!r} is not allowed in a repository name "
                    "(lower-case letters, digits, '.', '_', '__' and '-' only)")
        return (f"{whole!r}: path component {component!r} must start and end with a "
                "letter or digit, with one '.', one or two '_', or any '-' between")
    return None


def check_reference(ref: str) -> str | None:
    """None for a valid ``[registry/]path[:tag][@digest]`` written in a config file."""
    problem = _reference_problem(ref)
    if problem is not None:
        return problem
    rest = ref.partition("@")[0]
    colon, slash = rest.rfind(":"), rest.rfind("/")
    name = rest[:colon] if colon > slash else rest
    first = name.partition("/")[0]
    if "/" in name and "." not in first and ":" not in first and first.lower() != first:
        return (f"{ref!r}: repository names must be lower-case ({first!r} has upper-case "
                "letters; Docker would take it for a registry host)")
    return None


def _reference_problem(text: str) -> str | None:
    if not text:
        return "empty image reference"
    if text != text.strip() or any(c.isspace() for c in text):
        return f"image reference {text!r} contains white space"
    rest, at, digest = text.partition("@")
    if at:
        problem = check_digest(digest)
        if problem is not None:
            return f"{text!r}: {problem}"
    name = rest
    colon, slash = rest.rfind(":"), rest.rfind("/")
    if colon > slash:
        name, tag = rest[:colon], rest[colon + 1:]
        problem = check_tag(tag)
        if problem is not None:
            return f"{text!r}: {problem}"
    if not name:
        return f"{text!r}: no repository name"
    if len(name) > NAME_MAX:
        return f"{text!r}: the name is longer than {NAME_MAX} characters"
    host, path = _split_domain(name)
    if host is not None and not _HOST.fullmatch(host):
        return f"{text!r}: {host!r} is not a valid registry host[:port]"
    return _path_problem(text, path)


def check_digest(digest: str) -> str | None:
    """None for ``algorithm:encoded`` (sha256 and sha512 need their hex length)."""
    algorithm, sep, encoded = digest.partition(":")
    if not sep or not _ALGORITHM.fullmatch(algorithm) or not _ENCODED.fullmatch(encoded):
        return f"digest {digest!r} is not algorithm:hex (such as sha256:<64 hex digits>)"
    length = _HEX_LENGTH.get(algorithm)
    if length is not None and not re.fullmatch(rf"[0-9a-f]{{{length}}}", encoded):
        return f"a {algorithm} digest has {length} lower-case hex digits"
    return None


def _first_bad(text: str, allowed: str) -> str | None:
    return next((c for c in text if c not in allowed), None)


def is_loopback(host: str) -> bool:
    """A registry on this machine (127.0.0.0/8, ::1, localhost), with or without a
    port. Engines speak plain HTTP to these by default, and so do we."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.strip("[]")
    return name == "localhost" or name.startswith("127.") or name in ("::1", "0:0:0:0:0:0:0:1")
