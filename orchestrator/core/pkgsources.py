"""Where an image gets its packages from, read from its own files. Pure.

- apt's one-line format (``/etc/apt/sources.list``, ``sources.list.d/*.list``):
  ``deb [opt=value ...] URI SUITE [COMPONENT...]``; ``deb-src`` lines are skipped.
- apt's deb822 format (``sources.list.d/*.sources``): ``Types``, ``URIs``, ``Suites``,
  ``Components``, ``Enabled``, ``Architectures``, ``Signed-By`` (a path or an inline
  key), ``Trusted``; every URI x suite pair is one suite. Parsed with python-debian.
- apk's ``/etc/apk/repositories`` (and ``repositories.d/*.list``): one repository
  URL a line, an optional ``@tag`` in front.

Internal mirrors need no configuration: whatever the image names is what is
watched. ``trusted``/``signed-by`` are recorded, not acted on: the index
client does not verify signatures (``registry/indexwatch.py`` says why).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

APT_LIST = "etc/apt/sources.list"
APT_PARTS = "etc/apt/sources.list.d/"
APK_REPOSITORIES = "etc/apk/repositories"
APK_PARTS = "etc/apk/repositories.d/"
APK_ARCH = "etc/apk/arch"

# What imagefs reads for this module (small text files).
SOURCE_PATTERNS: tuple[str, ...] = (
    APT_LIST,
    APT_PARTS + "*.list",
    APT_PARTS + "*.sources",
    APK_REPOSITORIES,
    APK_PARTS + "*.list",
    APK_ARCH,
)

_SCHEMES = ("http://", "https://")


@dataclass(frozen=True)
class AptSuite:
    """One suite of one apt repository, as an image's sources name it."""

    uri: str  # without a trailing "/": "http://deb.debian.org/debian"
    suite: str  # "bookworm-security", or a flat repository's path ending in "/"
    components: tuple[str, ...] = ()  # empty for a flat repository
    architectures: tuple[str, ...] = ()  # arch=…; empty: the image's own
    trusted: bool = False
    signed_by: str | None = None  # a keyring path, or "inline key" for an embedded one
    origins: tuple[str, ...] = ()  # "etc/apt/sources.list:3" — where it was written
    kind: Literal["apt"] = field(default="apt", init=False)

    @property
    def flat(self) -> bool:
        return self.suite.endswith("/")

    @property
    def id(self) -> str:
        """What identifies the index across images: the repository and suite."""
        return f"apt {self.uri} {self.suite}"

    @property
    def security(self) -> bool:
        return is_security_suite(self.suite)

    @property
    def pollable(self) -> bool:
        return self.uri.startswith(_SCHEMES)


@dataclass(frozen=True)
class ApkRepository:
    url: str  # without a trailing "/": "https://dl-cdn.alpinelinux.org/alpine/v3.20/main"
    tag: str | None = None  # "@edge": only packages asked for with that tag come from it
    architectures: tuple[str, ...] = ()  # from /etc/apk/arch
    origins: tuple[str, ...] = ()
    kind: Literal["apk"] = field(default="apk", init=False)

    @property
    def id(self) -> str:
        return f"apk {self.url}"

    @property
    def security(self) -> bool:
        return False  # Alpine has no security-only repositories: fixes go to main

    @property
    def pollable(self) -> bool:
        return self.url.startswith(_SCHEMES)


IndexSource = AptSuite | ApkRepository


@dataclass(frozen=True)
class SourceProblem:
    where: str  # "etc/apt/sources.list:4"
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def is_security_suite(name: str) -> bool:
    """``bookworm-security``, ``noble-security``; Debian up to 10 said ``buster/updates``."""
    name = name.rstrip("/")
    return name.endswith("-security") or name.endswith("/updates")


def image_sources(files: Mapping[str, str | None]
                  ) -> tuple[list[IndexSource], list[SourceProblem]]:
    """Every repository the image's apt and apk configuration names, merged per index
    (one suite named twice is one suite with both origins), in file order."""
    found: list[IndexSource] = []
    problems: list[SourceProblem] = []
    apk_arch = tuple((files.get(APK_ARCH) or "").split())
    for path in sorted(files, key=_apt_order):
        text = files[path]
        if text is None:
            continue
        if path == APT_LIST or (path.startswith(APT_PARTS) and path.endswith(".list")):
            found += parse_one_line(text, path, problems)
        elif path.startswith(APT_PARTS) and path.endswith(".sources"):
            found += parse_deb822(text, path, problems)
        elif path == APK_REPOSITORIES or (path.startswith(APK_PARTS)
                                          and path.endswith(".list")):
            found += [replace(repo, architectures=apk_arch)
                      for repo in parse_apk_repositories(text, path, problems)]
    return merge(found), problems


def _apt_order(path: str) -> tuple[int, str]:
    # apt reads sources.list first, then sources.list.d in name order.
    return (0 if path in (APT_LIST, APK_REPOSITORIES) else 1, path)


def merge(sources: Iterable[IndexSource]) -> list[IndexSource]:
    """One entry per index id: components, architectures and origins united; trusted
    if any line says so; the first signed-by kept."""
    out: dict[str, IndexSource] = {}
    for source in sources:
        seen = out.get(source.id)
        if seen is None:
            out[source.id] = source
        elif isinstance(seen, AptSuite) and isinstance(source, AptSuite):
            out[source.id] = replace(
                seen, components=_union(seen.components, source.components),
                architectures=_union(seen.architectures, source.architectures),
                trusted=seen.trusted or source.trusted,
                signed_by=seen.signed_by or source.signed_by,
                origins=_union(seen.origins, source.origins))
        elif isinstance(seen, ApkRepository) and isinstance(source, ApkRepository):
            out[source.id] = replace(
                seen, architectures=_union(seen.architectures, source.architectures),
                origins=_union(seen.origins, source.origins))
    return list(out.values())


def _union(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*a, *b)))


# --- apt, one line a source --------------------------------------------------------------

_OPTIONS = re.compile(r"^\[([^\]]*)\]\s*")


def parse_one_line(text: str, path: str, problems: list[SourceProblem]) -> list[AptSuite]:
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{path}:{number}"
        kind, _, rest = line.replace("\t", " ").partition(" ")  # apt: any whitespace
        if kind == "deb-src":
            continue
        if kind != "deb":
            problems.append(SourceProblem(where, f"not a deb line: {raw.strip()!r}"))
            continue
        rest = rest.strip()
        options: dict[str, str] = {}
        if (match := _OPTIONS.match(rest)) is not None:
            for option in match[1].split():
                key, sep, value = option.partition("=")
                if not sep:
                    problems.append(SourceProblem(where, f"option {option!r} has no value"))
                    continue
                # "arch+=i386"/"arch-=i386" change the default set (the image's own
                # architectures), which is what is polled: only "arch=" replaces it.
                options[key.lower()] = value
            rest = rest[match.end():]
        try:
            words = shlex.split(rest)
        except ValueError:
            words = rest.split()
        if len(words) < 2:
            problems.append(SourceProblem(where, "a deb line needs a URI and a suite"))
            continue
        uri, suite, components = words[0], words[1], tuple(words[2:])
        if suite.endswith("/") and components:
            problems.append(SourceProblem(where, f"suite {suite!r} is a flat repository "
                                          "path: it takes no components"))
            continue
        if not suite.endswith("/") and not components:
            problems.append(SourceProblem(where, f"suite {suite!r} needs components "
                                          "(e.g. main)"))
            continue
        out.append(AptSuite(
            uri=uri.rstrip("/"), suite=suite, components=components,
            architectures=tuple(a for a in options.get("arch", "").split(",") if a),
            trusted=options.get("trusted", "").lower() == "yes",
            signed_by=options.get("signed-by") or None, origins=(where,)))
    return out


# --- apt, deb822 -------------------------------------------------------------------------


def parse_deb822(text: str, path: str, problems: list[SourceProblem]) -> list[AptSuite]:
    from debian.deb822 import Deb822

    out = []
    for index, stanza in enumerate(Deb822.iter_paragraphs(text.splitlines(keepends=True),
                                                          use_apt_pkg=False), 1):
        where = f"{path}#{index}"
        if stanza.get("Enabled", "yes").strip().lower() == "no":
            continue
        types = stanza.get("Types", "").split()
        if "deb" not in types:
            if not types:
                problems.append(SourceProblem(where, "no Types field"))
            continue
        uris, suites = stanza.get("URIs", "").split(), stanza.get("Suites", "").split()
        components = tuple(stanza.get("Components", "").split())
        if not uris or not suites:
            problems.append(SourceProblem(where, "needs URIs and Suites"))
            continue
        signed_by = stanza.get("Signed-By", "").strip() or None
        if signed_by is not None and "BEGIN PGP" in signed_by:
            signed_by = "inline key"
        for uri in uris:
            for suite in suites:
                if not suite.endswith("/") and not components:
                    problems.append(SourceProblem(where, f"suite {suite!r} needs Components"))
                    continue
                out.append(AptSuite(
                    uri=uri.rstrip("/"), suite=suite,
                    components=() if suite.endswith("/") else components,
                    architectures=tuple(stanza.get("Architectures", "").split()),
                    trusted=stanza.get("Trusted", "").strip().lower() == "yes",
                    signed_by=signed_by, origins=(where,)))
    return out


# --- apk ---------------------------------------------------------------------------------


def parse_apk_repositories(text: str, path: str,
                           problems: list[SourceProblem]) -> list[ApkRepository]:
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        tag = None
        if line.startswith("@"):
            tag, _, line = line.partition(" ")
            line = line.strip()
        if not line or " " in line:
            problems.append(SourceProblem(where, f"not a repository URL: {raw.strip()!r}"))
            continue
        out.append(ApkRepository(line.rstrip("/"), tag, (), (where,)))
    return out
