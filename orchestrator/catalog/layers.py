"""Loading ``layers/<name>/`` folders into a validated :class:`Catalog`."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from orchestrator.catalog.tomlfile import Table, display, read_toml
from orchestrator.core import dockerfile as df
from orchestrator.core import graph
from orchestrator.core.errors import CycleError, InputError, TemplateError
from orchestrator.core.model import UPSTREAM_PREFIX, Catalog, Layer, UpstreamSpec
from orchestrator.core.templates import UPSTREAM_FIELDS, expand, placeholders

LAYER_FILE = "layer.toml"
LAYER_KEYS = ["from", "image", "tags", "args", "matrix", "rebuild", "allow_root", "dockerfile"]


def dockerfile_texts(catalog: Catalog) -> dict[str, str]:
    """Each layer's Dockerfile text, read once per file (variants share one)."""
    by_path: dict[Path, str] = {}
    out: dict[str, str] = {}
    for lid, layer in catalog.layers.items():
        if layer.dockerfile not in by_path:
            try:
                by_path[layer.dockerfile] = layer.dockerfile.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise InputError(display(layer.dockerfile), f"cannot read: {exc}") from exc
        out[lid] = by_path[layer.dockerfile]
    return out


def load_catalog(layers_dir: Path, upstreams: Mapping[str, UpstreamSpec]) -> Catalog:
    if not layers_dir.is_dir():
        raise InputError(display(layers_dir), "layers folder not found ([catalog] layers)")
    raw: dict[str, tuple[Layer, str]] = {}  # id -> (layer, its unresolved `from`)
    for folder in sorted(p for p in layers_dir.iterdir() if p.is_dir()):
        if folder.name.startswith("."):
            continue
        if not (folder / LAYER_FILE).is_file():
            if (folder / "Dockerfile").is_file():
                raise InputError(display(folder / LAYER_FILE),
                                 "missing: every layer folder needs a layer.toml with from = …")
            continue
        for layer, parent_ref in _load_layer(folder, upstreams):
            raw[layer.id] = (layer, parent_ref)

    layers = _link_parents(raw, upstreams)
    parents = {lid: layer.parent for lid, layer in layers.items()}
    cycle = graph.find_cycle(parents)
    if cycle:
        raise CycleError(display(layers[cycle[0]].folder / LAYER_FILE), cycle)
    for layer in layers.values():
        if layer.parent is not None or layer.upstream is not None:
            _check_dockerfile(layer)
    ordered = {lid: layers[lid] for lid in graph.topological_order(parents)}
    return Catalog(layers=ordered, upstreams=dict(upstreams))


def _load_layer(folder: Path, upstreams: Mapping[str, UpstreamSpec]) -> list[tuple[Layer, str]]:
    where = display(folder / LAYER_FILE)
    table = Table(read_toml(folder / LAYER_FILE), where)
    table.check_keys(LAYER_KEYS)
    parent_ref = table.require("from", str).strip()
    if not parent_ref:
        raise table.error("from", "empty; name a parent layer or \"upstream:NAME\"")
    dockerfile = folder / table.get("dockerfile", str, "Dockerfile")
    if not dockerfile.is_file():
        raise InputError(display(dockerfile), "Dockerfile not found")

    image = table.get("image", str, folder.name)
    tags = table.string_list("tags")
    args = table.string_map("args")
    if "BASE_IMAGE" in args:
        raise table.error("args.BASE_IMAGE", "reserved: the orchestrator passes the parent "
                          "pinned by digest; remove it")
    rebuild = table.table("rebuild")
    rebuild.check_keys(["every"])
    every = rebuild.duration("every", None, minimum=1.0)
    matrix = _matrix(table)

    names = list(matrix)
    variants = [tuple(zip(names, combo, strict=True))
                for combo in itertools.product(*(matrix[n] for n in names))] if names else [()]
    out: list[tuple[Layer, str]] = []
    for variant in variants:
        values = dict(variant)
        suffix = "-".join(v for _, v in variant)
        layer_tags = tags or ([suffix] if suffix else [])
        try:
            expanded_tags = tuple(_expand(t, values, upstreams) for t in layer_tags)
            expanded_args = tuple((k, _expand(v, values, upstreams)) for k, v in args.items())
            expanded_from = expand(parent_ref, values)
        except TemplateError as exc:
            raise InputError(where, str(exc) + _placeholder_hint(names, upstreams)) from None
        out.append((
            Layer(
                id=f"{folder.name}:{suffix}" if suffix else folder.name,
                name=folder.name,
                folder=folder,
                dockerfile=dockerfile,
                image=image,
                parent=None,
                upstream=None,
                tags=expanded_tags,
                args=expanded_args,
                variant=variant,
                rebuild_every_s=every,
                allow_root=table.get("allow_root", bool, False),
            ),
            expanded_from,
        ))
    return out


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


def _link_parents(
    raw: dict[str, tuple[Layer, str]], upstreams: Mapping[str, UpstreamSpec]
) -> dict[str, Layer]:
    by_name: dict[str, list[str]] = {}
    for lid, (layer, _) in raw.items():
        by_name.setdefault(layer.name, []).append(lid)
    linked: dict[str, Layer] = {}
    for lid, (layer, ref) in raw.items():
        where = display(layer.folder / LAYER_FILE)
        if ref.startswith(UPSTREAM_PREFIX):
            name = ref[len(UPSTREAM_PREFIX):]
            if name not in upstreams:
                known = ", ".join(sorted(upstreams)) or "none defined"
                raise InputError(where, f"from: unknown upstream {name!r}: add "
                                 f"[upstream.{name}] to config.toml (known: {known})")
            linked[lid] = replace(layer, upstream=name)
            continue
        if ref in raw:
            linked[lid] = replace(layer, parent=ref)
            continue
        if ref in by_name:
            variants = ", ".join(by_name[ref])
            raise InputError(where, f"from: {ref!r} is a matrix layer; name one variant "
                             f"(one of: {variants})")
        known = ", ".join(sorted(raw)) or "none"
        raise InputError(where, f"from: unknown parent {ref!r} (layers: {known}; or "
                         "\"upstream:NAME\" for an [upstream.NAME] in config.toml)")
    return linked


def _check_dockerfile(layer: Layer) -> None:
    try:
        text = layer.dockerfile.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(display(layer.dockerfile), f"cannot read: {exc}") from exc
    problem = df.base_image_problem(df.parse(text))
    if problem:
        raise InputError(display(layer.dockerfile), problem)


def select(catalog: Catalog, names: list[str]) -> list[str]:
    """Layer ids for command-line names: an id, or a folder name (all its variants)."""
    chosen: list[str] = []
    for name in names:
        matches = [lid for lid, layer in catalog.layers.items() if name in (lid, layer.name)]
        if not matches:
            raise InputError("", f"unknown layer {name!r} (layers: "
                             f"{', '.join(catalog.layers)})")
        chosen.extend(m for m in matches if m not in chosen)
    return chosen
