"""Loading ``layers/<name>/`` folders into a validated :class:`Catalog`."""

from __future__ import annotations

import functools
import itertools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from orchestrator.catalog.beneath import confining
from orchestrator.catalog.digests import remember
from orchestrator.catalog.parents import LAYER_FILE as LAYER_FILE
from orchestrator.catalog.parents import Linker, Pending
from orchestrator.catalog.tomlfile import Table, display, is_folder, read_text_file, read_toml
from orchestrator.core import graph
from orchestrator.core.errors import CycleError, InputError, TemplateError
from orchestrator.core.imageref import check_repository, check_tag
from orchestrator.core.model import Catalog, Layer, UpstreamSpec
from orchestrator.core.platforms import check_platform, from_machine
from orchestrator.core.templates import UPSTREAM_FIELDS, expand, placeholders

# Never a build context: the whole system, or its pseudo-filesystems.
SYSTEM_DIRS = ("/proc", "/sys", "/dev", "/run")
LAYER_KEYS = ["from", "image", "tags", "args", "matrix", "rebuild", "allow_root", "dockerfile",
              "context", "platforms", "secrets"]


def dockerfile_texts(catalog: Catalog) -> dict[str, str]:
    """Each layer's Dockerfile text, read once per file (variants share one)."""
    by_path: dict[Path, str] = {}
    out: dict[str, str] = {}
    for lid, layer in catalog.layers.items():
        if layer.dockerfile not in by_path:
            try:
                by_path[layer.dockerfile] = read_text_file(
                    layer.dockerfile, beneath=confining(layer.dockerfile, layer.context))
            except FileNotFoundError:
                raise InputError(display(layer.dockerfile), "Dockerfile not found") from None
        out[lid] = by_path[layer.dockerfile]
    return out


def host_platform() -> str:
    return from_machine(os.uname().machine)


def load_catalog(layers_dir: Path, upstreams: Mapping[str, UpstreamSpec],
                 default_platforms: tuple[str, ...] = ()) -> Catalog:
    if not layers_dir.is_dir():
        raise InputError(display(layers_dir), "layers folder not found ([catalog] layers)")
    pending: dict[str, Pending] = {}
    with os.scandir(layers_dir) as entries:
        names = sorted(e.name for e in entries if not e.name.startswith(".") and is_folder(e))
    for name in names:
        folder = layers_dir / name
        if not os.path.isfile(os.path.join(folder, LAYER_FILE)):
            if (folder / "Dockerfile").is_file():
                raise InputError(display(folder / LAYER_FILE),
                                 "missing: every layer folder needs a layer.toml (see README)")
            continue
        for entry in _load_layer(folder, upstreams):
            pending[entry.layer.id] = entry

    layers = Linker(pending, upstreams,
                    platform=(default_platforms or (host_platform(),))[0]).link()
    parents = {lid: layer.parent for lid, layer in layers.items()}
    cycle = graph.find_cycle(parents)
    if cycle:
        raise CycleError(display(layers[cycle[0]].folder / LAYER_FILE), cycle)
    ordered = {lid: layers[lid] for lid in graph.topological_order(parents)}
    return Catalog(layers=_platforms(ordered, default_platforms or (host_platform(),)),
                   upstreams=dict(upstreams))


def _platforms(layers: dict[str, Layer], default: tuple[str, ...]) -> dict[str, Layer]:
    """Each layer's platform set: its own (a subset of its parent's), else its
    parent's, else the [build] default. Parents come first in ``layers``."""
    out: dict[str, Layer] = {}
    for lid, layer in layers.items():
        parent = out.get(layer.parent) if layer.parent else None
        inherited = parent.platforms if parent is not None else default
        if layer.platforms and parent is not None:
            missing = [p for p in layer.platforms if p not in parent.platforms]
            if missing:
                raise InputError(display(layer.folder / LAYER_FILE),
                                 f"platforms: {', '.join(missing)} is not built by its parent "
                                 f"{parent.id} ({display(parent.folder / LAYER_FILE)}: "
                                 f"{', '.join(parent.platforms)}); a child can only ask for "
                                 "platforms its parent has")
        out[lid] = replace(layer, platforms=tuple(sorted(layer.platforms or inherited)))
    return out


def _load_layer(folder: Path, upstreams: Mapping[str, UpstreamSpec]) -> list[Pending]:
    where = display(folder / LAYER_FILE)
    table = Table(read_toml(folder / LAYER_FILE), where)
    table.check_keys(LAYER_KEYS)
    # Optional: a Dockerfile that names its parent literally says it already.
    parent_ref = table.get("from", str, "").strip()
    if "from" in table.data and not parent_ref:
        raise table.error("from", "empty; name a parent layer or \"upstream:NAME\"")
    context_dir = _context_dir(folder, table)
    dockerfile, dockerfile_text = _read_dockerfile(folder, table, context_dir)
    fields = _Fields.read(table, folder)
    matrix = _matrix(table)
    names = list(matrix)
    variants = [tuple(zip(names, combo, strict=True))
                for combo in itertools.product(*(matrix[n] for n in names))] if names else [()]
    out: list[Pending] = []
    for variant in variants:
        values = dict(variant)
        suffix = "-".join(v for _, v in variant)
        layer_tags = fields.tags or ([suffix] if suffix else [])
        try:
            expanded_tags = tuple(_expand(t, values, upstreams) for t in layer_tags)
            expanded_args = tuple((k, _expand(v, values, upstreams))
                                  for k, v in fields.args.items())
            expanded_from = expand(parent_ref, values)
        except TemplateError as exc:
            raise InputError(where, str(exc) + _placeholder_hint(names, upstreams)) from None
        out.append(Pending(
            Layer(
                id=f"{folder.name}:{suffix}" if suffix else folder.name,
                name=folder.name,
                folder=folder,
                dockerfile=dockerfile,
                image=fields.image,
                parent=None,
                upstream=None,
                tags=expanded_tags,
                args=expanded_args,
                variant=variant,
                rebuild_every_s=fields.every,
                rebuild_packages=fields.packages,
                allow_root=fields.allow_root,
                context_dir=context_dir,
                platforms=fields.platforms,
                secrets=fields.secrets,
            ),
            expanded_from,
            dockerfile_text,
        ))
    return out


def _context_dir(folder: Path, table: Table) -> Path | None:
    """``context = "PATH"``: an existing repository can stay where it is (paths
    relative to the layer folder); None means the layer folder itself."""
    if "context" not in table.data:
        return None
    context_dir = Path(os.path.normpath(folder / table.require("context", str)))
    if not context_dir.is_dir():
        raise table.error("context", f"{display(context_dir)} is not a folder")
    real = os.path.realpath(context_dir)
    if real == "/" or any(real == top or real.startswith(top + "/") for top in SYSTEM_DIRS):
        # Hashing it would read /proc/kcore and every device; watching it, everything.
        raise table.error("context", f"{display(context_dir)} ({real}) cannot be a build "
                          "context: point it at the folder the Dockerfile copies from")
    return context_dir


def _read_dockerfile(folder: Path, table: Table, context_dir: Path | None) -> tuple[Path, str]:
    """The layer's Dockerfile and its text. Its digest comes with the read: keying
    the layer then needs no second read."""
    dockerfile = _dockerfile(folder, table, context_dir)
    try:
        return dockerfile, read_text_file(
            dockerfile, encoding="utf-8-sig", seen=functools.partial(remember, str(dockerfile)),
            beneath=confining(dockerfile, context_dir or folder))
    except FileNotFoundError:
        if "dockerfile" in table.data or context_dir is None:
            raise InputError(display(dockerfile), "Dockerfile not found") from None
        raise InputError(table.where, f"no Dockerfile: neither {display(folder / 'Dockerfile')} "
                         f"nor {display(context_dir / 'Dockerfile')} (the context's) exists; "
                         "add one, or say which with dockerfile = \"PATH\"") from None


@dataclass(frozen=True)
class _Fields:
    """A layer.toml's own settings, checked (matrix values not yet filled in)."""

    image: str
    tags: list[str]
    platforms: tuple[str, ...]
    secrets: tuple[str, ...]
    args: dict[str, str]
    every: float | None
    packages: bool  # [rebuild] packages: rebuilt when a package it installed gets a fix
    allow_root: bool

    @classmethod
    def read(cls, table: Table, folder: Path) -> _Fields:
        image = table.get("image", str, folder.name)
        if problem := check_repository(image):
            raise table.error("image", f"{image!r} is not a valid image name: {problem}")
        tags = table.string_list("tags")
        for tag in tags:
            # A tag with upstream placeholders is checked again once they are filled in.
            literal = tag if not placeholders(tag) else None
            if literal is not None and (problem := check_tag(literal)):
                raise table.error("tags", f"{tag!r} is not a valid tag: {problem}")
        platforms = tuple(dict.fromkeys(table.string_list("platforms")))
        for platform in platforms:
            if problem := check_platform(platform):
                raise table.error("platforms", problem)
        args = table.string_map("args")
        for name in args:
            # Passed as --build-arg NAME=VALUE: an "=" or a space would split elsewhere.
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", name):
                raise table.error(f"args.{name}", "not a build-arg name: use letters, digits "
                                  "and '_' (as the Dockerfile's ARG line names it)")
        if "BASE_IMAGE" in args:
            raise table.error("args.BASE_IMAGE", "reserved: the orchestrator passes the "
                              "parent pinned by digest; remove it")
        rebuild = table.table("rebuild")
        rebuild.check_keys(["every", "packages"])
        return cls(image, tags, platforms, tuple(table.string_list("secrets")), args,
                   rebuild.duration("every", None, minimum=1.0),
                   rebuild.get("packages", bool, True), table.get("allow_root", bool, False))


def _dockerfile(folder: Path, table: Table, context_dir: Path | None) -> Path:
    """``dockerfile``, else the layer folder's Dockerfile, else (with ``context`` and no
    Dockerfile in the folder) the context's, as ``docker build`` and bake default to."""
    if "dockerfile" in table.data:
        return Path(os.path.normpath(folder / table.require("dockerfile", str)))
    own = folder / "Dockerfile"
    if context_dir is None or os.path.exists(own):
        return own
    return context_dir / "Dockerfile"


def _matrix(table: Table) -> dict[str, list[str]]:
    matrix: dict[str, list[str]] = {}
    section = table.table("matrix")
    for name, values in section.data.items():
        if not isinstance(values, list) or not values or not all(
            isinstance(v, str | int | float) and not isinstance(v, bool) for v in values
        ):
            raise section.error(name, "expected a non-empty list of values")
        strings = [str(v) for v in values]
        if len(set(strings)) != len(strings):
            raise section.error(name, "values repeat")
        matrix[name] = strings
    return matrix


def _expand(template: str, values: dict[str, str], upstreams: Mapping[str, UpstreamSpec]) -> str:
    """Substitute matrix values now; check that what is left names a real upstream
    value, which is substituted once upstreams are resolved."""
    result = expand(template, values, keep_unknown=True)
    for name in placeholders(result):
        parts = name.strip().split(".")
        if not (len(parts) == 3 and parts[0] == "upstream" and parts[1] in upstreams
                and parts[2] in UPSTREAM_FIELDS):
            raise TemplateError(template, name)
    return result


def _placeholder_hint(matrix: list[str], upstreams: Mapping[str, UpstreamSpec]) -> str:
    known = [f"{{{m}}}" for m in matrix] + [f"{{upstream.{u}.tag}}" for u in upstreams]
    return f" (known: {', '.join(known)})" if known else " (no matrix values or upstreams defined)"


def select(catalog: Catalog, names: list[str]) -> list[str]:
    """Layer ids for command-line names: an id, or a folder name (all its variants).
    Linear in names and layers: a trigger may carry a very long list."""
    by_name: dict[str, list[str]] = {}
    for lid, layer in catalog.layers.items():
        by_name.setdefault(lid, []).append(lid)
        if layer.name != lid:
            by_name.setdefault(layer.name, []).append(lid)
    chosen: dict[str, None] = {}
    for name in dict.fromkeys(names):
        matches = by_name.get(name)
        if not matches:
            raise InputError("", f"unknown layer {name!r} (layers: "
                             f"{', '.join(catalog.layers)})")
        chosen.update(dict.fromkeys(matches))
    return list(chosen)
