"""``orchestrator init DIR``: adopt a tree of existing Dockerfiles as a catalog.

The Dockerfiles stay where they are and are never changed: init writes
``<out>/layers/<name>/layer.toml`` files that point at them with relative
``dockerfile``/``context`` paths, and a ``config.toml`` with an
``[upstream.NAME]`` section for every image the tree builds on but does not
build itself.

**Which files.** ``Dockerfile``, ``Containerfile``, ``*.Dockerfile``,
``*.Containerfile``, ``Dockerfile.*`` and ``Containerfile.*``, except
templates and ignore files (``Dockerfile.template``, ``*.dockerignore``, …).
Hidden folders (``.git``, ``.github``, ``.devcontainer``) and vendored ones
(``vendor``, ``node_modules``, ``third_party``, …) are skipped; symlinked
folders are not followed.

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
  ``buildpack-deps/{bookworm/curl,bookworm/scm}/Dockerfile``, scanned at its
  root).
- ``Dockerfile.<v>`` and ``<v>.Dockerfile`` add ``-<v>`` to the tag.
- ``LABEL org.opencontainers.image.title`` (when it is a valid repository
  name) and ``org.opencontainers.image.version`` (when a valid tag) in the
  final stage override the image and the tag.
- A Dockerfile alone in its image folder (``pyenv/Dockerfile``) has no tag in
  its path: it takes the tags that other Dockerfiles' FROM lines use for it
  (``FROM relenteny/pyenv:1.2.14`` teaches ``1.2.14``).

**Which FROM names which Dockerfile.** A reference matches a Dockerfile of
the tree (never its own) when its repository path equals the image name or
ends with ``/<image name>`` (the registry and namespace are ignored: the tree
does not say where its images are pushed), and its tag equals the tag the
path gives; a Dockerfile without a tag in its path matches ``latest`` and,
unless the reference is a Docker Hub official image (``python:3.12``, which
almost always means the real one), any tag. A tag the path gives wins over
``latest``, which wins over a learned tag; then the longer name match wins.
A reference with a digest names an existing image and matches nothing.
A reference a Dockerfile both builds on and would itself answer to
(``debian/bookworm/Dockerfile`` with ``FROM debian:bookworm``) names the
upstream, for every Dockerfile. Whatever matches nothing is an upstream.

**Conflicts** are errors naming the files: two Dockerfiles answering to one
image:tag, a reference two Dockerfiles answer to equally well, a cycle.

A Dockerfile has one parent: what its final stage builds on (following
``FROM <stage>``). Other images it uses (builder stages, ``COPY --from``)
are listed as ``needs``/``upstream_needs`` and get upstream sections too.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Literal

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
)
from orchestrator.core.model import UPSTREAM_PREFIX
from orchestrator.core.versions import parse_version

_BASE_NAMES = ("Dockerfile", "Containerfile")
# Files that look like Dockerfiles by name but are inputs to something else.
_NOT_DOCKERFILES = (".dockerignore", ".template", ".tmpl", ".tpl", ".j2", ".jinja", ".jinja2",
                    ".in", ".orig", ".rej", ".bak", ".swp", "~", ".md", ".txt", ".sh")
SKIP_FOLDERS = frozenset({"vendor", "vendors", "node_modules", "third_party", "third-party",
                          "bower_components", "venv", "__pycache__", "site-packages"})
TITLE_LABEL = "org.opencontainers.image.title"
VERSION_LABEL = "org.opencontainers.image.version"
Reading = Literal["nested", "repository"]


# -- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdoptedLayer:
    name: str  # folder under layers/
    image: str  # repository under the registry url
    tags: tuple[str, ...]  # may hold "latest" when that is all children use
    dockerfile: PurePosixPath  # relative to the scanned folder
    context: PurePosixPath  # relative to the scanned folder
    parent: str | None = None  # a layer name …
    upstream: str | None = None  # … or an upstream name (neither: scratch or unknown)
    parent_ref: str | None = None  # how the Dockerfile names it: "relenteny/pyenv:1.2.14"
    parent_line: int | None = None
    needs: tuple[str, ...] = ()  # other layers it uses (builder stages, COPY --from)
    upstream_needs: tuple[str, ...] = ()  # other upstreams it uses
    runs_as_root: bool = False  # no non-root USER in it or the tree's layers below it
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class AdoptedUpstream:
    name: str  # [upstream.NAME]
    image: str  # "docker.io/library/alpine"
    tag: str
    track: str | None  # a suggestion for following newer tags
    names: tuple[str, ...]  # the references as Dockerfiles write them


@dataclass(frozen=True)
class Adoption:
    root: Path  # the scanned folder
    layers: tuple[AdoptedLayer, ...]  # parents before children
    upstreams: tuple[AdoptedUpstream, ...]
    reading: Reading = "nested"
    registry_hint: str | None = None  # "docker.io/relenteny" when children agree on it
    notes: tuple[str, ...] = ()

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


def scan(root: Path) -> Adoption:
    """Read the Dockerfiles under ``root`` and infer the hierarchy (see the module doc)."""
    root = root.resolve()
    if not root.is_dir():
        raise InputError(display(root), "not a folder")
    texts: dict[str, str] = {}
    unreadable: list[str] = []
    for path in find_dockerfiles(root):
        try:
            texts[str(path)] = read_text_file(root / path)
        except (OSError, InputError) as exc:
            unreadable.append(f"{path}: skipped, cannot read it: {exc}")
    adoption = infer(root, texts)
    return replace(adoption, notes=(*unreadable, *adoption.notes))


# -- inference -----------------------------------------------------------------------------


@dataclass
class _Doc:
    path: PurePosixPath
    text: str
    analysis: Analysis
    variant: str
    label_image: str | None
    label_tag: str | None
    image: str = ""
    tag: str | None = None  # known from the path, the file name or a label
    learned: dict[str, None] = field(default_factory=dict)  # tags children use (ordered)

    @property
    def folders(self) -> tuple[str, ...]:
        return self.path.parent.parts

    def where(self, line: int) -> str:
        return f"{self.path}:{line}"


@dataclass
class _Matching:
    reading: Reading
    # (doc index, use index in analysis.image_uses()) -> doc index
    targets: dict[tuple[int, int], int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    shadowed: set[str] = field(default_factory=set)  # normalised refs that name upstreams


def infer(root: Path, files: Mapping[str, str]) -> Adoption:
    """The hierarchy of Dockerfiles given as {path relative to root: text}. No I/O."""
    root_name = _image_name(root.name) or "image"
    docs = [_doc(PurePosixPath(path), text) for path, text in sorted(files.items())]
    nested = _match(docs, root_name, "nested")
    matching = nested
    if any(d.folders for d in docs):
        repository = _match(docs, root_name, "repository")
        if len(repository.targets) > len(nested.targets) and not repository.problems:
            matching = repository
    _claim_all(docs, root_name, matching.reading)
    problems = [*_duplicates(docs), *matching.problems]
    if problems:
        raise AdoptionError(display(root), problems)
    for (index, use_index), target in matching.targets.items():
        ref = docs[index].analysis.image_uses()[use_index].ref
        if ref is not None and docs[target].tag is None:
            docs[target].learned.setdefault(ref.effective_tag or DEFAULT_TAG)
    cycle = _cycle(docs, matching)
    if cycle:
        raise AdoptionError(display(root), ["dependency cycle: " + " -> ".join(cycle)])
    return _assemble(root, docs, matching)


def _doc(path: PurePosixPath, text: str) -> _Doc:
    analysis = analyze(text)
    labels = dict(analysis.labels)
    title = labels.get(TITLE_LABEL)
    version = labels.get(VERSION_LABEL)
    return _Doc(
        path=path,
        text=text,
        analysis=analysis,
        variant=dockerfile_variant(path.name) or "",
        label_image=title if title and "$" not in title and not check_repository(title)
        else None,
        label_tag=version if version and "$" not in version and not check_tag(version)
        else None,
    )


def _claim(doc: _Doc, root_name: str, reading: Reading) -> tuple[str, str | None]:
    folders = list(doc.folders)
    if reading == "nested" and folders and not folders[0][:1].isdigit():
        image, parts = _image_name(folders[0]) or root_name, folders[1:]
    else:
        image, parts = root_name, folders
    if doc.variant:
        parts.append(doc.variant)
    tag = _tag_name("-".join(parts)) if parts else None
    return doc.label_image or image, doc.label_tag or tag


def _claim_all(docs: list[_Doc], root_name: str, reading: Reading) -> None:
    for doc in docs:
        doc.image, doc.tag = _claim(doc, root_name, reading)
        doc.learned.clear()


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


def _tag_score(ref: Reference, tag: str | None) -> int:
    """0: no match; 3: the tag the path gives; 2: "latest" for a Dockerfile without one;
    1: any other tag for it (not for official images), learned from the reference."""
    if ref.digest is not None:
        return 0
    wanted = ref.effective_tag or DEFAULT_TAG
    if tag is not None:
        return 3 if wanted == tag else 0
    if wanted == DEFAULT_TAG:
        return 2
    return 0 if ref.is_official else 1


def _match(docs: list[_Doc], root_name: str, reading: Reading) -> _Matching:
    _claim_all(docs, root_name, reading)
    result = _Matching(reading)

    def answers(doc: _Doc, ref: Reference) -> tuple[int, int]:
        return _tag_score(ref, doc.tag), _name_score(ref, doc.image)

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
                files = " and ".join(str(docs[j].path) for j in winners)
                result.problems.append(
                    f"{doc.where(use.line)}: {use.instruction} {use.resolved} could be "
                    f"{files}; give one of them an org.opencontainers.image.title/version "
                    "LABEL, or move it")
                continue
            result.targets[(index, use_index)] = winners[0]
    return result


def _duplicates(docs: list[_Doc]) -> list[str]:
    claimed: dict[tuple[str, str | None], _Doc] = {}
    problems: list[str] = []
    for doc in docs:
        key = (doc.image, doc.tag)
        if key in claimed:
            what = f"{doc.image}:{doc.tag}" if doc.tag else doc.image
            problems.append(f"{claimed[key].path} and {doc.path} both build {what}; rename a "
                            "folder or give one an org.opencontainers.image.version LABEL")
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

    layers: dict[int, AdoptedLayer] = {}
    parents: dict[int, int | None] = {}
    for index, doc in enumerate(docs):
        layer, parent = _layer(index, doc, names, matching, upstream_of)
        layers[index] = layer
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
                    _registry_hint(docs, matching), tuple(dict.fromkeys(notes)))


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
    # Learned tags in a stable order: by their numbers, then text; "latest" last.
    tags = (doc.tag,) if doc.tag is not None else tuple(sorted(
        doc.learned, key=lambda t: (t == DEFAULT_TAG, [int(n) for n in re.findall(r"\d+", t)],
                                    t)))
    layer = AdoptedLayer(
        name=names[index],
        image=doc.image,
        tags=tags,
        dockerfile=doc.path,
        context=doc.path.parent,
        parent=names[parent] if parent is not None else None,
        upstream=upstream,
        parent_ref=parent_use.resolved if parent_use is not None else None,
        parent_line=parent_use.line if parent_use is not None else None,
        needs=tuple(needs),
        upstream_needs=tuple(upstream_needs),
        notes=tuple(notes),
    )
    return layer, parent


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
    """Where children say the tree's images live, when they all agree."""
    prefixes: set[str] = set()
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


# -- output --------------------------------------------------------------------------------


def summary(adoption: Adoption) -> str:
    """The inferred hierarchy as an indented tree, with upstreams at the roots."""
    kids: dict[str | None, list[AdoptedLayer]] = {}
    for layer in adoption.layers:
        key = layer.parent if layer.parent is not None else (
            UPSTREAM_PREFIX + layer.upstream if layer.upstream is not None else None)
        kids.setdefault(key, []).append(layer)
    lines = [f"{adoption.root}: {len(adoption.layers)} Dockerfiles, "
             f"{len(adoption.upstreams)} upstream image(s)"
             + (" (read as one repository)" if adoption.reading == "repository" else "")]

    def tree(key: str, depth: int) -> None:
        for layer in kids.get(key, []):
            tags = ", ".join(layer.tags) or "no tag"
            lines.append(f"{'  ' * depth}{layer.name}  {layer.image} [{tags}]  "
                         f"({layer.dockerfile})")
            tree(layer.name, depth + 1)

    for up in adoption.upstreams:
        track = f", track suggestion: {up.track}" if up.track else ""
        users = [layer.name for layer in adoption.layers if up.name in layer.upstream_needs]
        also = f"; also used by {', '.join(users)}" if users else ""
        lines.append(f"upstream {up.name}: {up.image}:{up.tag}{track}{also}")
        tree(UPSTREAM_PREFIX + up.name, 1)
    if None in kids:
        lines.append("no parent (FROM scratch, or not inferred):")
        for layer in kids[None]:
            lines.append(f"  {layer.name}  {layer.image}  ({layer.dockerfile})")
            tree(layer.name, 2)
    notes = [*adoption.notes,
             *(f"{layer.dockerfile}: {note}" for layer in adoption.layers for note in layer.notes)]
    if notes:
        lines.append("notes:")
        lines += [f"  {note}" for note in notes]
    return "\n".join(lines)


def write(adoption: Adoption, out: Path) -> str:
    """Write ``<out>/config.toml`` and ``<out>/layers/<name>/layer.toml``; never overwrite.

    Every target is checked before anything is written, so a refusal leaves
    nothing half done. Returns the summary and the files written.
    """
    out = out.resolve()
    files: dict[Path, str] = {out / "config.toml": render_config(adoption)}
    for layer in adoption.layers:
        folder = out / "layers" / layer.name
        files[folder / "layer.toml"] = render_layer(adoption, layer, folder)
    for path in files:
        if path.exists() or path.is_symlink():
            raise InputError(display(path), "already exists; init never overwrites a file "
                             "(move it away, or write to another folder)")
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("x", encoding="utf-8") as handle:  # "x": refuse a file raced in
            handle.write(text)
    written = "\n".join(f"  {path.relative_to(out).as_posix()}" for path in files)
    return f"{summary(adoption)}\nwrote under {out}:\n{written}"


def render_config(adoption: Adoption) -> str:
    lines = [
        f"# Written by `orchestrator init` from the Dockerfiles under {adoption.root}.",
        "# They are built as they are; review the hierarchy below and in layers/.",
        "",
        "[catalog]",
        'layers = "layers"',
        "",
        "# Where built images go: <url>/<image>:<tag>.",
    ]
    if adoption.registry_hint:
        lines.append(f"# The Dockerfiles name this tree's images under {adoption.registry_hint}.")
    lines += ["# [registry]",
              f"# url = {_toml(adoption.registry_hint or 'registry.example:5000/base')}"]
    for up in adoption.upstreams:
        lines += ["", f"[upstream.{up.name}]", f"image = {_toml(up.image)}",
                  f"tag = {_toml(up.tag)}"]
        if up.track:
            lines.append(f"# track = {_toml(up.track)}   # instead of tag: follow newer tags")
        lines.append(f"names = [{', '.join(_toml(n) for n in up.names)}]")
    return "\n".join(lines) + "\n"


def render_layer(adoption: Adoption, layer: AdoptedLayer, folder: Path) -> str:
    """``layer.toml`` for ``layer`` written in ``folder`` (paths relative to it)."""
    source = adoption.root.resolve()
    dockerfile = _relative(source / layer.dockerfile, folder)
    context = _relative(source / layer.context, folder)
    lines = [f"# Adopted by `orchestrator init`: builds {layer.dockerfile} as it is "
             "(the file is never changed)."]
    how = f"FROM {layer.parent_ref} (line {layer.parent_line})" if layer.parent_ref else ""
    if layer.parent is not None:
        lines += [f"# {how} is layer {layer.parent!r}.", f"from = {_toml(layer.parent)}"]
    elif layer.upstream is not None:
        lines += [f"# {how} is upstream {layer.upstream!r} in config.toml.",
                  f"from = {_toml(UPSTREAM_PREFIX + layer.upstream)}"]
    elif layer.parent_ref == "scratch":
        lines += ["# No parent: the final stage builds FROM scratch. Every layer needs one:",
                  "# build this image elsewhere, declare it as an [upstream] and let the",
                  "# layers above name it (or remove this folder)."]
    elif layer.parent_ref and "@" in layer.parent_ref:
        lines += [f"# No parent: {how} is pinned by digest in the Dockerfile. Every layer",
                  "# needs one it can watch: declare that image as an [upstream] with a tag",
                  '# and set from = "upstream:NAME" (or remove this folder).']
    else:
        lines.append('# from = "…"   # could not tell the parent; see the notes below')
    lines.append(f"image = {_toml(layer.image)}")
    tags = [t for t in layer.tags if t != DEFAULT_TAG]
    if tags:
        lines.append(f"tags = [{', '.join(_toml(t) for t in tags)}]")
    else:
        lines.append('# tags = ["…"]   # no version found (children use none, or only "latest", '
                     "which moves and so is refused)")
    lines += [f"dockerfile = {_toml(dockerfile)}", f"context = {_toml(context)}"]
    if layer.needs or layer.upstream_needs:
        used = [f"layer {n!r}" for n in layer.needs] + [
            f"upstream {n!r}" for n in layer.upstream_needs]
        lines.append(f"# Also uses (build stages, COPY --from, RUN --mount): {', '.join(used)}.")
    if layer.runs_as_root:
        lines.append("# allow_root = true   # no USER sets a non-root user in this image or "
                     "the layers below it; `orchestrator lint` refuses root images unless "
                     "allowed")
    lines += [f"# note: {note}" for note in layer.notes]
    return "\n".join(lines) + "\n"


def _relative(target: Path, folder: Path) -> str:
    return PurePosixPath(Path(os.path.relpath(target, folder)).as_posix()).as_posix()


def _toml(value: str) -> str:
    """A TOML basic string (JSON's escapes are valid TOML; DEL must be escaped too)."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007F")
