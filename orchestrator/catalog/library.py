"""Official-images library files: which folder of a tree is published under which tags.

docker-library/official-images keeps one file per repository (``library/<image>``,
its name is the image's). The format, from that repository's README: RFC 2822
headers, lines starting with ``#`` ignored, entries separated by blank lines;
the first entry is global (``Maintainers``, ``GitRepo``) and its fields are
defaults for the others. Each other entry publishes ``<image>:<tag>`` for every
one of its ``Tags``, built from ``Directory`` (default: the repository's top)
and ``File`` (default: ``Dockerfile``) on each of its ``Architectures``
(default: amd64). ``SharedTags`` are shared by several entries (a manifest list
across them, e.g. a Linux and a Windows image). ``GitCommit``, ``GitRepo``,
``GitFetch``, ``Builder`` and ``Constraints`` are read and left alone: init
adopts the working tree as it is.
"""

from __future__ import annotations

import email.parser
import email.policy
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from orchestrator.catalog.tomlfile import display, read_text_file
from orchestrator.core.errors import InputError
from orchestrator.core.imageref import check_repository, check_tag

# bashbrew's architecture names as OCI platforms (arm64v8 is plain linux/arm64 here,
# as this host's own platform is spelled; see core/platforms.py).
ARCHITECTURES = {
    "amd64": "linux/amd64", "arm32v5": "linux/arm/v5", "arm32v6": "linux/arm/v6",
    "arm32v7": "linux/arm/v7", "arm64v8": "linux/arm64", "i386": "linux/386",
    "mips64le": "linux/mips64le", "ppc64le": "linux/ppc64le", "riscv64": "linux/riscv64",
    "s390x": "linux/s390x", "windows-amd64": "windows/amd64",
}
_PER_ARCH = ("GitRepo", "GitFetch", "GitCommit", "Directory", "File")


@dataclass(frozen=True)
class LibraryEntry:
    tags: tuple[str, ...]
    shared_tags: tuple[str, ...]
    architectures: tuple[str, ...]  # as written: "amd64", "arm64v8", "windows-amd64"
    dockerfile: PurePosixPath  # Directory/File, relative to the repository's top
    line: int  # where the entry starts in the file
    per_arch: tuple[str, ...] = ()  # "arm64v8-Directory", … fields this reading ignores

    @property
    def platforms(self) -> tuple[str, ...]:
        """The OCI platforms of the architectures bashbrew knows (others are left out)."""
        return tuple(ARCHITECTURES[a] for a in self.architectures if a in ARCHITECTURES)


@dataclass(frozen=True)
class Library:
    image: str  # the file's name: the repository its tags are published in
    entries: tuple[LibraryEntry, ...]
    where: str = "library file"  # how errors and notes name the file


def read_library(path: Path) -> Library:
    """The library file at ``path``; its name is the image it publishes."""
    try:
        text = read_text_file(path)
    except FileNotFoundError:
        raise InputError(display(path), "library file not found") from None
    return parse_library(text, display(path), path.name)


def parse_library(text: str, where: str, image: str) -> Library:
    """The entries of a library file; ``where`` names it in errors."""
    problem = check_repository(image)
    if problem:
        raise InputError(where, f"the file's name is the image it publishes, and {image!r} "
                         f"is not an image name: {problem}")
    paragraphs = _paragraphs(text)
    if not paragraphs:
        raise InputError(where, "empty: a library file has a global entry (Maintainers, "
                         "GitRepo) and one entry per Dockerfile (Tags, Directory)")
    defaults = _fields(*paragraphs[0], where)
    if "tags" in defaults:
        raise InputError(f"{where}:{paragraphs[0][0]}", "the first entry holds the global "
                         "fields (Maintainers, GitRepo); put Tags in an entry of their own")
    entries: list[LibraryEntry] = []
    seen: dict[str, int] = {}
    for line, body in paragraphs[1:]:
        fields = {**defaults, **_fields(line, body, where)}
        at = f"{where}:{line}"
        tags = _list(fields.get("tags", ""))
        if not tags:
            raise InputError(at, "an entry without Tags: every entry after the first "
                             "publishes tags (Tags: 1.2.3, 1.2)")
        shared = _list(fields.get("sharedtags", ""))
        for tag in (*tags, *shared):
            if problem := check_tag(tag):
                raise InputError(at, problem)
        for tag in tags:
            if tag in seen:
                raise InputError(at, f"tag {tag!r} is already published by the entry at line "
                                 f"{seen[tag]}; a tag names one image (SharedTags are the "
                                 "ones several entries share)")
            seen[tag] = line
        directory = PurePosixPath(fields.get("directory", ".") or ".")
        file = fields.get("file", "Dockerfile") or "Dockerfile"
        path = directory / file
        if path.is_absolute() or ".." in path.parts:
            raise InputError(at, f"Directory/File {path} leaves the repository; give a path "
                             "inside it")
        entries.append(LibraryEntry(
            tags=tags,
            shared_tags=shared,
            architectures=_list(fields.get("architectures", "amd64")),
            dockerfile=path,
            line=line,
            per_arch=tuple(sorted(name for name in fields if _is_per_arch(name))),
        ))
    return Library(image, tuple(entries), where)


def _paragraphs(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each entry; comment lines dropped."""
    out: list[tuple[int, str]] = []
    lines: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("#"):
            continue
        if line.strip():
            if not lines:
                start = number
            lines.append(line)
        elif lines:
            out.append((start, "\n".join(lines) + "\n"))
            lines = []
    if lines:
        out.append((start, "\n".join(lines) + "\n"))
    return out


def _fields(line: int, body: str, where: str) -> dict[str, str]:
    """One entry's fields by lower-cased name (RFC 2822: names are case-insensitive,
    a line starting with white space continues the one before)."""
    message = email.parser.HeaderParser(policy=email.policy.compat32).parsestr(body)
    if message.get_payload() or body[:1].isspace():
        raise InputError(f"{where}:{line}", "not a 'Field: value' line in this entry (the "
                         "format: RFC 2822 headers, entries separated by blank lines)")
    fields: dict[str, str] = {}
    for name, value in message.items():
        key = name.lower()
        if key in fields:
            raise InputError(f"{where}:{line}", f"{name} is given twice in one entry")
        fields[key] = " ".join(str(value).split())
    return fields


def _list(value: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(item.strip() for item in value.split(",") if item.strip()))


def _is_per_arch(name: str) -> bool:
    arch, _, field = name.rpartition("-")
    return bool(arch) and field in {f.lower() for f in _PER_ARCH}

