"""``orchestrator init DIR``: adopt a tree of existing Dockerfiles as a catalog.

The Dockerfiles stay where they are and are never changed: init writes
``<out>/layers/<name>/layer.toml`` files that point at them with relative
``dockerfile``/``context`` paths, and a ``config.toml`` with an
``[upstream.NAME]`` section for every image the tree builds on but does not
build itself.

**Which files.** ``Dockerfile``, ``Containerfile``, ``*.Dockerfile``,
``*.Containerfile``, ``Dockerfile.*`` and ``Containerfile.*``, except the
names of other kinds of file (ignore files such as ``Dockerfile.dockerignore``
and ``Dockerfile.containerignore``, templates, backups, patches, documents,
scripts; see ``_NOT_DOCKERFILES``), and a ``Dockerfile.*`` or ``*.Dockerfile``
with no FROM instruction (it is not one, whatever its name). Hidden folders
(``.git``, ``.github``, ``.devcontainer``) and vendored ones (``vendor``,
``node_modules``, ``third_party``, …) are skipped; symlinked folders are not
followed.

**Which image a Dockerfile builds.** FROM lines name images, not files, so
each Dockerfile is given the image name its folder implies:

- ``<image>/<part>/<part>/Dockerfile`` builds ``<image>:<part>-<part>``, the
  layout of a folder of official-images style repositories
  (``debian/bookworm/slim/Dockerfile`` is ``debian:bookworm-slim``, which a
  child names as ``FROM debian:bookworm-slim``).
- When the first folder starts with a digit (``3.12/slim/Dockerfile``), or the
  file sits in the scanned folder itself, the image is the scanned folder's
  name and every folder is part of the tag: ``DIR`` is then one repository.
  The same reading applies to the whole tree when it explains more FROM
  lines than the first one (a single official-images repository such as
  ``buildpack-deps/{debian/bookworm/curl,debian/bookworm/scm}/Dockerfile``,
  scanned at its root).
- ``Dockerfile.<v>`` and ``<v>.Dockerfile`` add ``-<v>`` to the tag.
- ``LABEL org.opencontainers.image.title`` (when it is a valid repository
  name; a registry host in it is where the image is pushed, not part of its
  name) and ``org.opencontainers.image.version`` (when a valid tag) in the
  final stage override the image and the tag.
- A Dockerfile alone in its image folder (``pyenv/Dockerfile``) has no tag in
  its path: it takes the tags that other Dockerfiles' FROM lines use for it
  (``FROM relenteny/pyenv:1.2.14`` teaches ``1.2.14``).
- **A library file** (``--library``, an official-images ``library/<image>``)
  says it outright: its name is the image, each entry's ``Tags`` (and the
  ``SharedTags`` no other Dockerfile of the tree shares) are the tags of the
  Dockerfile at ``Directory``/``File``.

**Which FROM names which Dockerfile.** A reference matches a Dockerfile of
the tree (never its own) when its repository path equals the image name or
ends with ``/<image name>`` (the registry and namespace are ignored: the tree
does not say where its images are pushed), and its tag is one the Dockerfile
answers to. From the strongest: a tag of its own (its path's, its label's, its
library entry's ``Tags``); a library ``SharedTags``; a *tail* of its path's tag
(``buildpack-deps:bookworm-curl`` is ``debian/bookworm/curl/Dockerfile``: the
official-images repositories publish without their grouping folders);
``latest`` for a Dockerfile without a tag; and, unless the reference is a
Docker Hub official image (``python:3.12``, which almost always means the real
one), any tag for a Dockerfile without a tag. Then the longer name match wins.
When the tree's FROM lines drop the same number of leading folders every time,
every Dockerfile's tag is read that way (``debian/bookworm/Dockerfile`` is
``buildpack-deps:bookworm``). A reference with a digest names an existing
image and matches nothing. A reference a Dockerfile both builds on and would
itself answer to (``debian/bookworm/Dockerfile`` with ``FROM debian:bookworm``)
names the upstream, for every Dockerfile. Whatever matches nothing is an
upstream.

**What init cannot match** it lists, each with the one line that would fix it:
a reference two Dockerfiles answer to equally well (it is read as the
published image, an upstream, until ``from`` names one), a reference naming
one of the tree's images by a tag none of them has, a FROM it cannot resolve
(an ARG without a value), and a Dockerfile with no parent to watch (``FROM
scratch``, a digest).

**Conflicts** are errors naming the files: two Dockerfiles answering to one
image:tag, a cycle.

A Dockerfile has one parent: what its final stage builds on (following
``FROM <stage>``). Other images it uses (builder stages, ``COPY --from``)
are listed as ``needs``/``upstream_needs`` and get upstream sections too.
A child naming its parent by ``latest`` (``FROM myorg/base``) gets ``from``
set to that layer: ``latest`` is never published, so no tag could say it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Literal

from orchestrator.catalog.library import Library, LibraryEntry
from orchestrator.catalog.lint import final_user
from orchestrator.catalog.tomlfile import display, read_text_file
from orchestrator.core.dockerfile import Analysis, ImageUse, analyze
from orchestrator.core.errors import InputError
from orchestrator.core.imageref import (
    DEFAULT_TAG,
    DOCKER_HUB,
    OFFICIAL_NAMESPACE,
    Reference,
    check_repository,
    check_tag,
    parse_reference,
)
from orchestrator.core.versions import parse_version

_BASE_NAMES = ("Dockerfile", "Containerfile")
# Names that look like Dockerfiles' but are inputs to something else.
_NOT_DOCKERFILES = (
    # the engines' ignore files, and templates a generator renders into Dockerfiles
    ".dockerignore", ".containerignore", ".template", ".tmpl", ".tpl", ".j2", ".jinja",
    ".jinja2", ".in", ".erb", ".mustache", ".hbs", ".gotmpl", ".m4", ".njk",
    # backups, patches, editors' files, examples
    ".orig", ".rej", ".bak", ".old", ".swp", ".swo", "~", ".patch", ".diff", ".sample",
    ".example", ".dist",
    # documents, scripts and data kept beside a Dockerfile
    ".md", ".rst", ".adoc", ".txt", ".html", ".sh", ".bash", ".ps1", ".py", ".json", ".yml",
    ".yaml", ".toml", ".lock", ".sum", ".sha256", ".asc", ".sig", ".log")
SKIP_FOLDERS = frozenset({"vendor", "vendors", "node_modules", "third_party", "third-party",
                          "bower_components", "venv", "__pycache__", "site-packages"})
TITLE_LABEL = "org.opencontainers.image.title"
VERSION_LABEL = "org.opencontainers.image.version"
Reading = Literal["nested", "repository"]
# How well a Dockerfile's tags answer a reference's (see the module doc).
_OWN, _SHARED, _TAIL, _LATEST, _ANY = 5, 4, 3, 2, 1


# -- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdoptedLayer:
    name: str  # folder under layers/
    image: str  # repository under the registry url
    tags: tuple[str, ...]  # never "latest": nothing may publish it
    dockerfile: PurePosixPath  # relative to the scanned folder
    context: PurePosixPath  # relative to the scanned folder
    parent: str | None = None  # a layer name …
    upstream: str | None = None  # … or an upstream name (neither: scratch or unknown)
    parent_ref: str | None = None  # how the Dockerfile names it: "relenteny/pyenv:1.2.14"
    parent_line: int | None = None
    needs: tuple[str, ...] = ()  # other layers it uses (builder stages, COPY --from)
    upstream_needs: tuple[str, ...] = ()  # other upstreams it uses
    runs_as_root: bool = False  # no non-root USER in it or the tree's layers below it
    platforms: tuple[str, ...] = ()  # a library entry's Architectures, as OCI platforms
    from_candidates: tuple[str, ...] = ()  # layers its unmatched parent reference may mean
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class AdoptedUpstream:
    name: str  # [upstream.NAME]
    image: str  # "docker.io/library/alpine"
    tag: str
    track: str | None  # a suggestion for following newer tags
    names: tuple[str, ...]  # the references as Dockerfiles write them


@dataclass(frozen=True)
class Unmatched:
    """What init could not resolve to a parent, and the one line that fixes it."""

    where: str  # "debian/trixie/scm/Dockerfile:2"
    what: str  # "FROM buildpack-deps:curl could be …; read as upstream …"
    fix: str  # 'layers/x/layer.toml: from = "y"'


@dataclass(frozen=True)
class Adoption:
    root: Path  # the scanned folder
    layers: tuple[AdoptedLayer, ...]  # parents before children
    upstreams: tuple[AdoptedUpstream, ...]
    reading: Reading = "nested"
    registry_hint: str | None = None  # "docker.io/relenteny" when children agree on it
    notes: tuple[str, ...] = ()
    unmatched: tuple[Unmatched, ...] = ()
    library: str | None = None  # the library file that named the images

    def layer(self, name: str) -> AdoptedLayer:
        return next(layer for layer in self.layers if layer.name == name)

    def upstream(self, name: str) -> AdoptedUpstream:
        return next(up for up in self.upstreams if up.name == name)


class AdoptionError(InputError):
    """Conflicts between Dockerfiles; ``problems`` has one line each."""

    def __init__(self, where: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(where, "cannot infer the hierarchy:\n  " + "\n  ".join(problems))


# -- finding Dockerfiles -------------------------------------------------------------------


def dockerfile_variant(name: str) -> str | None:
    """"" for ``Dockerfile``, "slim" for ``Dockerfile.slim``/``slim.Dockerfile``; None when
    the file name is not a Dockerfile's."""
    if name.endswith(_NOT_DOCKERFILES):
        return None
    for base in _BASE_NAMES:
        if name == base:
            return ""
        if name.startswith(base + ".") and len(name) > len(base) + 1:
            return name[len(base) + 1:]
        if name.endswith("." + base) and len(name) > len(base) + 1:
            return name[: -len(base) - 1]
    return None


def find_dockerfiles(root: Path) -> list[PurePosixPath]:
    """Dockerfiles under ``root``, relative to it, sorted."""
    found: list[PurePosixPath] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_FOLDERS)
        relative = PurePosixPath(Path(folder).relative_to(root).as_posix())
        for name in files:
            if dockerfile_variant(name) is not None and (Path(folder) / name).is_file():
                found.append(relative / name)
    return sorted(found)


def scan(root: Path, library: Library | None = None) -> Adoption:
    """Read the Dockerfiles under ``root`` and infer the hierarchy (see the module doc)."""
    root = root.resolve()
    if not root.is_dir():
        raise InputError(display(root), "not a folder")
    paths = set(find_dockerfiles(root))
    if library is not None:
        # A library entry's File may be named like no Dockerfile ("Dockerfile-to-use").
        for entry in library.entries:
            target = (root / entry.dockerfile).resolve()
            if target.is_relative_to(root) and target.is_file():
                paths.add(entry.dockerfile)
    texts: dict[str, str] = {}
    unreadable: list[str] = []
    for path in sorted(paths):
        try:
            texts[str(path)] = read_text_file(root / path)
        except (OSError, InputError) as exc:
            unreadable.append(f"{path}: skipped, cannot read it: {exc}")
    adoption = infer(root, texts, library)
    return replace(adoption, notes=(*unreadable, *adoption.notes))


# -- inference -----------------------------------------------------------------------------


@dataclass
class _Doc:
    path: PurePosixPath
    text: str
    analysis: Analysis
    variant: str
    label_image: str | None  # the title label's repository path, without a registry
    label_registry: str | None  # … and its registry, when it names one
    label_tag: str | None
    entry: LibraryEntry | None = None
    image: str = ""
    tag: str | None = None  # its first tag: from the path, the file name, a label, a library
    own: tuple[str, ...] = ()  # every tag it answers to as its own
    shared: tuple[str, ...] = ()  # a library entry's SharedTags
    parts: tuple[str, ...] = ()  # what its path's tag is made of: ("debian", "bookworm")
    tails: dict[str, int] = field(default_factory=dict)  # tag of parts[k:] -> k, for k >= 1
    learned: dict[str, None] = field(default_factory=dict)  # tags children use (ordered)

    @property
    def folders(self) -> tuple[str, ...]:
        return self.path.parent.parts

    def where(self, line: int) -> str:
        return f"{self.path}:{line}"


@dataclass
class _Matching:
    reading: Reading
    # (doc index, use index in analysis.image_uses()) -> doc index, and how well
    targets: dict[tuple[int, int], int] = field(default_factory=dict)
    tiers: dict[tuple[int, int], int] = field(default_factory=dict)
    ambiguous: dict[tuple[int, int], list[int]] = field(default_factory=dict)
    shadowed: set[str] = field(default_factory=set)  # normalised refs that name upstreams


def infer(root: Path, files: Mapping[str, str], library: Library | None = None) -> Adoption:
    """The hierarchy of Dockerfiles given as {path relative to root: text}. No I/O."""
    root_name = library.image if library is not None else _image_name(root.name) or "image"
    notes: list[str] = []
    docs: list[_Doc] = []
    for path, text in sorted(files.items()):
        doc = _doc(PurePosixPath(path), text)
        if doc.variant and doc.analysis.final is None:
            notes.append(f"{path}: skipped: named like a Dockerfile, but it has no FROM "
                         "instruction")
            continue
        docs.append(doc)
    if library is not None:
        notes += _attach_library(docs, library)
        matching = _match(docs, root_name, "repository")
    else:
        matching = _match(docs, root_name, "nested")
        if any(d.folders for d in docs):
            repository = _match(docs, root_name, "repository")
            if _explained(repository) > _explained(matching):
                matching = repository
    _claim_all(docs, root_name, matching.reading)
    problems = _duplicates(docs)
    if problems:
        raise AdoptionError(display(root), problems)
    cycle = _cycle(docs, matching)
    if cycle:
        raise AdoptionError(display(root), ["dependency cycle: " + " -> ".join(cycle)])
    notes += _learn_tags(docs, matching)
    adoption = _assemble(root, docs, matching)
    return replace(adoption, notes=(*notes, *adoption.notes),
                   library=library.where if library is not None else None)


def _explained(matching: _Matching) -> int:
    """How many references a reading finds in the tree (ambiguously or not)."""
    return len(matching.targets) + len(matching.ambiguous)


def _doc(path: PurePosixPath, text: str) -> _Doc:
    analysis = analyze(text)
    labels = dict(analysis.labels)
    title = labels.get(TITLE_LABEL)
    version = labels.get(VERSION_LABEL)
    image = registry = None
    if title and "$" not in title and not check_repository(title):
        # "ghcr.io/acme/base" is acme/base pushed to ghcr.io: FROM lines name it by its
        # path, whatever registry they write.
        ref = parse_reference(title)
        image, registry = ref.path, ref.registry if ref.registry != DOCKER_HUB else None
    return _Doc(
        path=path,
        text=text,
        analysis=analysis,
        variant=dockerfile_variant(path.name) or "",
        label_image=image,
        label_registry=registry,
        label_tag=version if version and "$" not in version and not check_tag(version)
        else None,
    )


def _attach_library(docs: list[_Doc], library: Library) -> list[str]:
    notes: list[str] = []
    by_path = {doc.path: doc for doc in docs}
    for entry in library.entries:
        doc = by_path.get(entry.dockerfile)
        where = f"{library.where}:{entry.line}"
        if doc is None:
            notes.append(f"{where}: Tags {', '.join(entry.tags)}: the tree has no "
                         f"{entry.dockerfile}; not adopted")
            continue
        doc.entry = entry
        if entry.per_arch:
            notes.append(f"{where}: {', '.join(entry.per_arch)} ignored: {entry.dockerfile} "
                         "is adopted for every architecture")
    notes += [f"{doc.path}: not in {library.where}: named by its folders"
              for doc in docs if doc.entry is None]
    return notes


def _claim(doc: _Doc, root_name: str, reading: Reading) -> None:
    """Give ``doc`` the image and tags it answers to under ``reading``."""
    doc.learned.clear()
    folders = list(doc.folders)
    if reading == "nested" and folders and not folders[0][:1].isdigit():
        image, parts = _image_name(folders[0]) or root_name, folders[1:]
    else:
        image, parts = root_name, folders
    if doc.variant:
        parts.append(doc.variant)
    if doc.entry is not None:
        doc.image, doc.own, doc.shared = root_name, doc.entry.tags, doc.entry.shared_tags
        # Its first tag names its layer: the path's when the library has it (python's
        # "3.13-bookworm" outlives "3.13.5-bookworm"), else the library's first.
        path_tag = _tag_name("-".join(parts)) if parts else None
        doc.tag = path_tag if path_tag in doc.own else next(
            (t for t in doc.own if t != DEFAULT_TAG), None)
        doc.parts, doc.tails = (), {}
        return
    doc.image = doc.label_image or image
    doc.parts, doc.tails, doc.shared = tuple(parts), {}, ()
    if doc.label_tag:
        doc.tag = doc.label_tag
    else:
        doc.tag = _tag_name("-".join(parts)) if parts else None
        for k in range(1, len(parts)):
            tail = _tag_name("-".join(parts[k:]))
            if tail is not None and tail != doc.tag:
                doc.tails.setdefault(tail, k)
    doc.own = (doc.tag,) if doc.tag is not None else ()


def _claim_all(docs: list[_Doc], root_name: str, reading: Reading) -> None:
    for doc in docs:
        _claim(doc, root_name, reading)


def _image_name(text: str) -> str | None:
    """A folder name as a repository path component, or None."""
    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower())
    # Keep only the separators the grammar allows: ".", "_", "__", "-"+.
    name = re.sub(r"[._-]{2,}",
                  lambda m: m.group(0) if re.fullmatch(r"__|-+", m.group(0)) else "-", name)
    name = name.strip("._-")
    return name if name and check_repository(name) is None else None


def _tag_name(text: str) -> str | None:
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).lstrip(".-")[:128]
    return tag if tag and check_tag(tag) is None else None


def _name_score(ref: Reference, image: str) -> int:
    """0: no match; more for a longer match, most for the whole path."""
    components = image.count("/") + 1
    if ref.path == image:
        return 2 * components + 1
    return 2 * components if ref.path.endswith("/" + image) else 0


def _tag_score(ref: Reference, doc: _Doc) -> int:
    """0: no match, else how well (the tiers of the module doc)."""
    if ref.digest is not None:
        return 0
    wanted = ref.effective_tag or DEFAULT_TAG
    if wanted in doc.own:
        return _OWN
    if wanted in doc.shared:
        return _SHARED
    if wanted in doc.tails:
        return _TAIL
    if doc.own or doc.shared:
        return 0
    if wanted == DEFAULT_TAG:
        return _LATEST
    return 0 if ref.is_official else _ANY


def _match(docs: list[_Doc], root_name: str, reading: Reading) -> _Matching:
    _claim_all(docs, root_name, reading)
    result = _Matching(reading)

    def answers(doc: _Doc, ref: Reference) -> tuple[int, int]:
        return _tag_score(ref, doc), _name_score(ref, doc.image)

    for doc in docs:
        for use in doc.analysis.image_uses():
            if use.ref is not None and min(answers(doc, use.ref)) > 0:
                result.shadowed.add(use.ref.normalized())
    for index, doc in enumerate(docs):
        for use_index, use in enumerate(doc.analysis.image_uses()):
            ref = use.ref
            if ref is None or ref.normalized() in result.shadowed:
                continue
            scored = [(answers(other, ref), j) for j, other in enumerate(docs)
                      if j != index and min(answers(other, ref)) > 0]
            if not scored:
                continue
            best = max(score for score, _ in scored)
            winners = [j for score, j in scored if score == best]
            if len(winners) > 1:
                result.ambiguous[(index, use_index)] = winners  # reported, never guessed
                continue
            result.targets[(index, use_index)] = winners[0]
            result.tiers[(index, use_index)] = best[0]
    return result


def _duplicates(docs: list[_Doc]) -> list[str]:
    claimed: dict[tuple[str, str | None], _Doc] = {}
    problems: list[str] = []
    for doc in docs:
        for tag in doc.own or (None,):
            key = (doc.image, tag)
            if key in claimed:
                what = f"{doc.image}:{tag}" if tag else doc.image
                problems.append(f"{claimed[key].path} and {doc.path} both build {what}; rename "
                                "a folder or give one an org.opencontainers.image.version "
                                "LABEL")
            else:
                claimed[key] = doc
    return problems


def _cycle(docs: list[_Doc], matching: _Matching) -> list[str] | None:
    edges: dict[int, set[int]] = {i: set() for i in range(len(docs))}
    for (index, _), target in matching.targets.items():
        edges[index].add(target)
    state: dict[int, int] = {}  # 1 = on the path, 2 = done
    path: list[int] = []

    def visit(node: int) -> list[int] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in range(len(docs)):
        if start not in state:
            found = visit(start)
            if found:
                return [str(docs[i].path) for i in found]
    return None


def _learn_tags(docs: list[_Doc], matching: _Matching) -> list[str]:
    """The tags children use for each Dockerfile (they are written with its own); and, for
    an image whose tails all drop the same folders, all its tags read that way."""
    drops: dict[str, dict[int, str]] = {}  # image -> leading parts dropped -> an example
    for (index, use_index), target in matching.targets.items():
        ref = docs[index].analysis.image_uses()[use_index].ref
        tier = matching.tiers[(index, use_index)]
        if ref is None or tier == _SHARED:
            continue
        doc = docs[target]
        wanted = ref.effective_tag or DEFAULT_TAG
        doc.learned.setdefault(wanted)  # its own too: a renamed tag must still answer
        if tier == _TAIL:
            drops.setdefault(doc.image, {}).setdefault(
                doc.tails[wanted], f"{ref.familiar()} is {doc.path}")
    notes: list[str] = []
    for image, seen in sorted(drops.items()):
        if len(seen) != 1:
            continue
        [(k, example)] = seen.items()
        renamed = {i: _tag_name("-".join(doc.parts[k:])) for i, doc in enumerate(docs)
                   if doc.image == image and doc.entry is None and doc.label_tag is None
                   and len(doc.parts) > k}
        final = {(doc.image, renamed.get(i, doc.tag)) for i, doc in enumerate(docs)}
        if None in renamed.values() or len(final) < len(docs):
            continue  # two Dockerfiles would share a tag: keep the whole paths
        for i, tag in renamed.items():
            docs[i].tag = tag
        folders = "folder" if k == 1 else f"{k} folders"
        notes.append(f"{image}: tags are read without their first {folders}, as the tree's "
                     f"FROM lines name its images ({example})")
    return notes


# -- assembling the result -----------------------------------------------------------------


def _assemble(root: Path, docs: list[_Doc], matching: _Matching) -> Adoption:
    names = _layer_names(docs)
    notes: list[str] = []
    # Upstreams: every external reference with a tag, keyed without the registry spelling.
    externals: dict[tuple[str, str], list[str]] = {}
    refs: dict[tuple[str, str], Reference] = {}
    for index, doc in enumerate(docs):
        for use_index, use in enumerate(doc.analysis.image_uses()):
            ref = use.ref
            if ref is None or (index, use_index) in matching.targets:
                continue
            if ref.digest is not None:
                notes.append(f"{doc.where(use.line)}: {use.resolved} is pinned by digest in "
                             "the Dockerfile; left as it is (no upstream)")
                continue
            key = (ref.name, ref.effective_tag or DEFAULT_TAG)
            refs.setdefault(key, ref)
            written = externals.setdefault(key, [])
            if use.resolved and use.resolved not in written:
                written.append(use.resolved)
    upstream_names = _upstream_names(list(refs.values()))
    upstreams = tuple(
        AdoptedUpstream(upstream_names[key], ref.name, key[1], suggest_track(key[1]),
                        tuple(externals[key]))
        for key, ref in sorted(refs.items(), key=lambda kv: upstream_names[kv[0]]))

    def upstream_of(ref: Reference) -> str | None:
        return upstream_names.get((ref.name, ref.effective_tag or DEFAULT_TAG))

    shared, shared_notes = _unique_shared_tags(docs)
    notes += shared_notes
    by_latest = _named_by_latest(docs, names, matching)
    layers: dict[int, AdoptedLayer] = {}
    parents: dict[int, int | None] = {}
    unmatched: list[Unmatched] = []
    for index, doc in enumerate(docs):
        layer, parent = _layer(index, doc, names, matching, upstream_of)
        layer, problem = _unmatched(index, docs, names, matching, layer)
        if problem is not None:
            unmatched.append(problem)
        tags = _tags(doc, shared.get(index, ()))
        layers[index] = replace(layer, tags=tags,
                                notes=(*by_latest.get(index, ()), *layer.notes))
        parents[index] = parent
        if matching.shadowed:
            for use in doc.analysis.image_uses():
                if use.ref is not None and use.ref.normalized() in matching.shadowed:
                    notes.append(f"{doc.where(use.line)}: {use.resolved} is read as the "
                                 "upstream image, because a Dockerfile of the tree builds on "
                                 "it under the same name")
    order = _parents_first(parents)
    for index in order:
        layers[index] = replace(layers[index], runs_as_root=_runs_as_root(index, docs, parents))
    return Adoption(root, tuple(layers[i] for i in order), upstreams, matching.reading,
                    _registry_hint(docs, matching), tuple(dict.fromkeys(notes)),
                    tuple(unmatched))


def _layer(index: int, doc: _Doc, names: list[str], matching: _Matching,
           upstream_of: Callable[[Reference], str | None]) -> tuple[AdoptedLayer, int | None]:
    analysis = doc.analysis
    uses = analysis.image_uses()
    notes: list[str] = list(analysis.notes)
    parent: int | None = None
    upstream: str | None = None
    parent_use: ImageUse | None = None
    if analysis.final is None:
        notes.append("no FROM instruction")
    else:
        root_stage = analysis.root_of(analysis.final)
        parent_use = root_stage.base
        target = matching.targets.get((index, root_stage.index))
        if target is not None:
            parent = target
        elif parent_use.ref is not None and parent_use.ref.digest is None:
            upstream = upstream_of(parent_use.ref)
        elif parent_use.problem:
            notes.append(f"line {parent_use.line}: cannot tell the parent: {parent_use.problem}")
    needs: dict[str, None] = {}
    upstream_needs: dict[str, None] = {}
    for use_index, use in enumerate(uses):
        if use is parent_use:
            continue
        target = matching.targets.get((index, use_index))
        if target is not None and target != parent:
            needs.setdefault(names[target])
        elif target is None and use.ref is not None and use.ref.digest is None:
            name = upstream_of(use.ref)
            if name is not None and name != upstream:
                upstream_needs.setdefault(name)
        if use.problem and use is not parent_use:
            notes.append(f"line {use.line}: {use.problem}")
        if (index, use_index) in matching.ambiguous:
            which = " or ".join(names[j] for j in matching.ambiguous[(index, use_index)])
            notes.append(f"line {use.line}: {use.resolved} could be layer {which}; read as "
                         "the published image")
    entry = doc.entry
    if entry is not None and not any(p.startswith("linux/") for p in entry.platforms):
        notes.append(f"Architectures: {', '.join(entry.architectures)}: no Linux platform, "
                     "which is all the engines here build; remove this folder, or keep it "
                     "off the builds")
    layer = AdoptedLayer(
        name=names[index],
        image=doc.image,
        tags=(),
        dockerfile=doc.path,
        context=doc.path.parent,
        parent=names[parent] if parent is not None else None,
        upstream=upstream,
        parent_ref=parent_use.resolved if parent_use is not None else None,
        parent_line=parent_use.line if parent_use is not None else None,
        needs=tuple(needs),
        upstream_needs=tuple(upstream_needs),
        platforms=entry.platforms if entry is not None else (),
        notes=tuple(notes),
    )
    return layer, parent


def _tags(doc: _Doc, shared: tuple[str, ...]) -> tuple[str, ...]:
    """What the layer publishes: its own tags, then learned ones in a stable order (by their
    numbers, then text); never "latest", which moves (lint refuses it)."""
    learned = sorted(doc.learned, key=lambda t: ([int(n) for n in re.findall(r"\d+", t)], t))
    own = doc.own if doc.entry is not None else (doc.tag,) if doc.tag is not None else ()
    return tuple(t for t in dict.fromkeys([*own, *shared, *learned]) if t != DEFAULT_TAG)


def _unique_shared_tags(docs: list[_Doc]) -> tuple[dict[int, tuple[str, ...]], list[str]]:
    """A library's SharedTags that one Dockerfile of the tree holds alone (several make a
    manifest list across images, which one layer cannot publish), and notes on the rest."""
    holders: dict[str, list[int]] = {}
    for index, doc in enumerate(docs):
        for tag in doc.shared:
            holders.setdefault(tag, []).append(index)
    own = {tag for doc in docs for tag in doc.own}
    out: dict[int, tuple[str, ...]] = {}
    left: dict[tuple[int, ...], list[str]] = {}
    for tag, held in holders.items():
        if len(held) == 1 and tag not in own:
            out[held[0]] = (*out.get(held[0], ()), tag)
        elif tag != DEFAULT_TAG:
            left.setdefault(tuple(held), []).append(tag)
    notes = [f"SharedTags {', '.join(tags)} not written: "
             f"{' and '.join(str(docs[i].path) for i in held)} share them (a manifest list "
             "across images, which no one layer publishes)" for held, tags in left.items()]
    return out, notes


def _named_by_latest(docs: list[_Doc], names: list[str],
                     matching: _Matching) -> dict[int, list[str]]:
    """Notes on layers that children name by ``latest``."""
    out: dict[int, list[str]] = {}
    for (index, use_index), target in sorted(matching.targets.items()):
        use = docs[index].analysis.image_uses()[use_index]
        if use.ref is not None and (use.ref.effective_tag or DEFAULT_TAG) == DEFAULT_TAG:
            out.setdefault(target, []).append(
                f"{docs[index].where(use.line)} names it {use.resolved} (latest), a tag nothing "
                f"publishes: layer {names[index]!r} builds on it through from = "
                f"\"{names[target]}\"")
    return out


def _unmatched(index: int, docs: list[_Doc], names: list[str], matching: _Matching,
               layer: AdoptedLayer) -> tuple[AdoptedLayer, Unmatched | None]:
    """What keeps ``layer`` from a parent init is sure of, with the line that fixes it."""
    doc = docs[index]
    final = doc.analysis.final
    toml = f"layers/{layer.name}/layer.toml"
    remove = f"rm -r layers/{layer.name}   (or build it elsewhere and name it as an [upstream])"
    if final is None:
        return layer, Unmatched(str(doc.path), "no FROM instruction", remove)
    stage = doc.analysis.root_of(final)
    use, key = stage.base, (index, stage.index)
    where = doc.where(use.line)
    if use.scratch:
        return layer, Unmatched(where, "FROM scratch: a layer needs a parent to build on",
                                remove)
    if use.ref is None:
        return layer, Unmatched(where, f"FROM {use.written}: {use.problem or 'unreadable'}",
                                f'{toml}: from = "LAYER"   (or "upstream:NAME")')
    if use.ref.digest is not None:
        return layer, Unmatched(where, f"FROM {use.resolved} is pinned by digest: nothing "
                                "moves it, so nothing rebuilds it", remove)
    if key in matching.targets or use.ref.normalized() in matching.shadowed:
        return layer, None
    upstream = f"upstream {layer.upstream!r}" if layer.upstream else "an upstream"
    if key in matching.ambiguous:
        candidates = matching.ambiguous[key]
        what = (f"FROM {use.resolved} could be "
                + " or ".join(f"{docs[j].path} ({names[j]})" for j in candidates)
                + f"; read as the published image, {upstream}")
    else:
        candidates = [j for j, other in enumerate(docs)
                      if j != index and _name_score(use.ref, other.image)]
        if not candidates or _name_score(use.ref, doc.image):
            # An image from elsewhere, or the published image this one is named after
            # (nginx/custom/Dockerfile on nginx:1.27): its upstream is the answer.
            return layer, None
        image = docs[candidates[0]].image
        listed = ", ".join(names[j] for j in candidates[:5])
        more = f", … ({len(candidates)} in all)" if len(candidates) > 5 else ""
        what = (f"FROM {use.resolved} names {image}, an image of this tree, by a tag none of "
                f"its Dockerfiles has ({listed}{more}); read as the published image, "
                f"{upstream}")
    chosen = [names[j] for j in candidates]
    layer = replace(layer, from_candidates=tuple(chosen))
    quoted = [f'"{name}"' for name in chosen]  # layer names need no escapes
    return layer, Unmatched(where, what, f"{toml}: from = {quoted[0]}"
                            + (f"   (or {', '.join(quoted[1:3])}"
                               f"{', …' if len(chosen) > 3 else ''})" if len(chosen) > 1
                               else ""))


def _runs_as_root(index: int, docs: list[_Doc], parents: Mapping[int, int | None]) -> bool:
    """The last USER along the chain inside the tree; an upstream base counts as root."""
    node: int | None = index
    while node is not None:
        found = final_user(docs[node].analysis.instructions)
        if found is not None:
            return found[0] in ("root", "0")
        node = parents[node]
    return True


def _layer_names(docs: list[_Doc]) -> list[str]:
    out: list[str] = []
    for doc in docs:
        base = doc.image.replace("/", "-")
        if doc.tag is not None:
            base = f"{base}-{doc.tag}"
        base = re.sub(r"[^a-z0-9._-]+", "-", base.lower()).strip("._-") or "layer"
        name, n = base, 2
        while name in out:
            name, n = f"{base}-{n}", n + 1
        out.append(name)
    return out


def _upstream_names(refs: list[Reference]) -> dict[tuple[str, str], str]:
    """Short, unique names: the last path component, then with the tag, then the path."""
    def candidates(ref: Reference) -> list[str]:
        tag = ref.effective_tag or DEFAULT_TAG
        parts = ref.path.split("/")
        options = [parts[-1], f"{parts[-1]}-{tag}", f"{'-'.join(parts)}-{tag}",
                   f"{ref.registry}-{'-'.join(parts)}-{tag}"]
        return [re.sub(r"[^a-z0-9]+", "-", o.lower()).strip("-") or "upstream" for o in options]

    keys = [(ref.name, ref.effective_tag or DEFAULT_TAG) for ref in refs]
    level = dict.fromkeys(keys, 0)
    options = {key: candidates(ref) for key, ref in zip(keys, refs, strict=True)}
    while True:
        chosen = {key: options[key][level[key]] for key in keys}
        counts: dict[str, int] = {}
        for name in chosen.values():
            counts[name] = counts.get(name, 0) + 1
        clashing = [k for k in keys if counts[chosen[k]] > 1 and level[k] < 3]
        if not clashing:
            break
        for key in clashing:
            level[key] += 1
    # The last option can still clash after clean-up ("a.b" and "a-b"): number them.
    seen: dict[str, int] = {}
    for key in keys:
        name = chosen[key]
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            chosen[key] = f"{name}-{seen[name]}"
    return chosen


def _registry_hint(docs: list[_Doc], matching: _Matching) -> str | None:
    """Where children (and title labels naming a registry) say the tree's images live,
    when they all agree."""
    prefixes = {doc.label_registry for doc in docs if doc.label_registry is not None}
    for (index, use_index), target in matching.targets.items():
        ref = docs[index].analysis.image_uses()[use_index].ref
        if ref is None:
            continue
        namespace = ref.repository[: -len(docs[target].image)].rstrip("/")
        prefixes.add("/".join(p for p in (ref.registry, namespace) if p))
    hint = prefixes.pop() if len(prefixes) == 1 else None
    # Children naming official images ("FROM buildpack-deps:…") say nothing about a registry.
    return None if hint == f"{DOCKER_HUB}/{OFFICIAL_NAMESPACE}" else hint


def _parents_first(parents: dict[int, int | None]) -> list[int]:
    order: list[int] = []
    placed: set[int] = set()

    def place(node: int) -> None:
        if node in placed:
            return
        parent = parents[node]
        if parent is not None:
            place(parent)
        placed.add(node)
        order.append(node)

    for node in parents:
        place(node)
    return order


def suggest_track(tag: str) -> str | None:
    """A ``track`` policy that follows newer tags like ``tag``, or None (follow the tag).

    ``3.10.2`` -> ``semver:~3`` (newest 3.x); ``0.9`` -> ``semver:~0.9``;
    ``1.22-alpine`` -> ``regex:1\\.\\d+-alpine`` (same major, same suffix, same
    number of parts); ``bookworm`` -> None.
    """
    version = parse_version(tag)
    if version is not None:
        major, minor, _ = version
        return f"semver:~{major}" if major else f"semver:~0.{minor}"
    match = re.fullmatch(r"([vV]?\d+)((?:\.\d+){0,2})-([A-Za-z0-9_.-]+)", tag)
    if match:
        first, rest, suffix = match.groups()
        numbers = r"\.\d+" * rest.count(".")
        return f"regex:{first}{numbers}-{re.escape(suffix)}"
    return None
