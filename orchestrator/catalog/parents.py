"""Which layer or upstream each layer stands on, from ``from =`` or from its FROM lines.

A Dockerfile may take its parent through ``ARG BASE_IMAGE`` / ``FROM
${BASE_IMAGE}`` (then ``from`` says which), or name it literally as existing
Dockerfiles do (``FROM myorg/pyenv:2.8.1``). A literal name matches:

- a catalog layer when the reference's repository is the layer's image (its
  last path component: registry and namespace are how *other* hosts spell
  it) and its tag is one of the layer's literal tags; with ``from = LAYER``,
  also by a tag no layer has, or none (``FROM myorg/base``: Docker's
  ``latest``, which no layer publishes);
- an upstream when it is one of the upstream's ``names``, or its image and
  tag, or its image and any tag its ``track`` policy accepts.

The final stage's base is the parent (inferred when ``from`` is absent). Any
other image the file names (a builder stage on ``golang:1.22``, ``COPY
--from=…``) is an upstream when one matches, else an *external* base: it is
resolved to a digest at plan time and enters the key, and lint says how to
watch it. Ambiguity, or a parent that matches nothing, is an error naming the
files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from orchestrator.catalog.tomlfile import display
from orchestrator.core import fromlines
from orchestrator.core.errors import InputError
from orchestrator.core.imageref import Reference, parse_reference
from orchestrator.core.model import UPSTREAM_PREFIX, BaseUse, Layer, UpstreamSpec
from orchestrator.core.templates import placeholders
from orchestrator.core.versions import matcher

LAYER_FILE = "layer.toml"


@dataclass(frozen=True)
class Pending:
    """A loaded layer before linking: its ``from`` (or "") and its Dockerfile text."""

    layer: Layer
    parent_ref: str
    dockerfile_text: str


def _where(layer: Layer) -> str:
    return display(layer.folder / LAYER_FILE)


def _matches_layer(ref: Reference, layer: Layer) -> bool:
    tag = ref.effective_tag
    if ref.digest is not None or tag is None:
        return False
    image = ref.repository.rsplit("/", 1)[-1]
    return image == layer.image.rsplit("/", 1)[-1] and tag in {
        t for t in layer.tags if not placeholders(t)}


def _names_image_of(ref: Reference, layer: Layer) -> bool:
    return ref.digest is None and (
        ref.repository.rsplit("/", 1)[-1] == layer.image.rsplit("/", 1)[-1])


def _matches_upstream(ref: Reference, spec: UpstreamSpec) -> bool:
    normalized = ref.normalized()
    if normalized in spec.names:
        return True
    if spec.image is None:
        return False
    own = parse_reference(spec.image)
    if own.name != ref.name or ref.digest is not None:
        return False
    tag = ref.effective_tag or ""
    if spec.tag is not None:
        return tag == spec.tag
    return spec.track is not None and matcher(spec.track)(tag) is not None


class Linker:
    def __init__(self, pending: Mapping[str, Pending],
                 upstreams: Mapping[str, UpstreamSpec]) -> None:
        self.pending = pending
        self.upstreams = upstreams
        by_name: dict[str, list[str]] = {}
        for lid, entry in pending.items():
            by_name.setdefault(entry.layer.name, []).append(lid)
        self.by_name = by_name
        self._check_claims()

    def _check_claims(self) -> None:
        """Two layers claiming one image:tag would make a FROM line ambiguous."""
        claims: dict[tuple[str, str], str] = {}
        for lid, entry in self.pending.items():
            image = entry.layer.image.rsplit("/", 1)[-1]
            for tag in entry.layer.tags:
                if placeholders(tag):
                    continue
                other = claims.setdefault((image, tag), lid)
                if other != lid:
                    raise InputError(_where(entry.layer), f"{image}:{tag} is claimed by two "
                                     f"layers: {lid} and {other} "
                                     f"({_where(self.pending[other].layer)}); give one of "
                                     "them another image or tag")

    def layers_for(self, ref: Reference) -> list[str]:
        return [lid for lid, e in self.pending.items() if _matches_layer(ref, e.layer)]

    def upstreams_for(self, ref: Reference) -> list[str]:
        return [name for name, spec in self.upstreams.items() if _matches_upstream(ref, spec)]

    def link(self) -> dict[str, Layer]:
        return {lid: self._link(lid, entry) for lid, entry in self.pending.items()}

    def _link(self, lid: str, entry: Pending) -> Layer:
        layer, ref = entry.layer, entry.parent_ref
        args = {k: v for k, v in layer.args if not placeholders(v)}
        style = fromlines.parent_style(entry.dockerfile_text, args)
        if style.kind == "base_image":
            if not ref:
                raise InputError(_where(layer), "from: missing: this Dockerfile takes its parent "
                                 "through ARG BASE_IMAGE, so say which layer "
                                 "(from = \"LAYER\" or \"upstream:NAME\")")
            if style.problem:
                raise InputError(display(layer.dockerfile), style.problem)
            return self._explicit(layer, ref)
        if style.problem:
            raise InputError(display(layer.dockerfile), style.problem)
        return self._literal(lid, entry, args)

    def _explicit(self, layer: Layer, ref: str) -> Layer:
        if ref.startswith(UPSTREAM_PREFIX):
            name = ref[len(UPSTREAM_PREFIX):]
            if name not in self.upstreams:
                known = ", ".join(sorted(self.upstreams)) or "none defined"
                raise InputError(_where(layer), f"from: unknown upstream {name!r}: add "
                                 f"[upstream.{name}] to config.toml (known: {known})")
            return replace(layer, upstream=name)
        if ref in self.pending:
            return replace(layer, parent=ref)
        if ref in self.by_name:
            variants = ", ".join(self.by_name[ref])
            raise InputError(_where(layer), f"from: {ref!r} is a matrix layer; name one variant "
                             f"(one of: {variants})")
        known = ", ".join(sorted(self.pending)) or "none"
        raise InputError(_where(layer), f"from: unknown parent {ref!r} (layers: {known}; or "
                         "\"upstream:NAME\" for an [upstream.NAME] in config.toml)")

    def _literal(self, lid: str, entry: Pending, args: Mapping[str, str]) -> Layer:
        layer, where = entry.layer, display(entry.layer.dockerfile)
        analysis = fromlines.analyze(entry.dockerfile_text, args)
        final = analysis.final
        assert final is not None  # parent_style reported "no FROM" already
        root = analysis.root_of(final).base
        parent_key = root.ref.normalized() if root.ref is not None else None
        linked = self._explicit(layer, entry.parent_ref) if entry.parent_ref else layer
        bases: list[BaseUse] = []
        seen: set[tuple[str, str]] = set()
        for use in analysis.image_uses():
            if use.ref is None or use.resolved is None:
                continue
            text, key = use.resolved, use.ref.normalized()
            if (text, key) in seen:
                continue
            seen.add((text, key))
            is_parent = key == parent_key
            layers = [other for other in self.layers_for(use.ref) if other != lid]
            ups = self.upstreams_for(use.ref)
            if is_parent:
                linked = self._literal_parent(lid, entry, linked, use, layers, ups)
                bases.append(BaseUse(text, key, "parent"))
            elif layers:
                raise InputError(where, f"line {use.line}: {use.written} is layer {layers[0]}, "
                                 "but a layer builds on one layer only (its parent, the final "
                                 "stage's base); use another image for this stage")
            elif ups:
                self._check_registry_upstream(where, use, ups[0])
                bases.append(BaseUse(text, key, "upstream", ups[0]))
            else:
                bases.append(BaseUse(text, key, "external"))
        if linked.parent is None and linked.upstream is None:
            # Every layer stands on something the orchestrator watches and pins; an
            # image from nothing, or on a digest nobody moves, has no such parent.
            why = ("builds from nothing" if root.scratch else
                   "is pinned by digest in the Dockerfile" if root.ref is not None
                   and root.ref.digest else "names no image this catalog knows")
            raise InputError(where, f"line {root.line}: FROM {root.written} {why}, so this "
                             "layer has no parent to build on: build that base elsewhere and "
                             "declare it as [upstream.NAME] image = … tag = … in config.toml, "
                             f"then from = \"upstream:NAME\" in {_where(layer)}")
        return replace(linked, bases=tuple(bases))

    def _literal_parent(self, lid: str, entry: Pending, linked: Layer,
                        use: fromlines.ImageUse, layers: list[str], ups: list[str]) -> Layer:
        where = display(entry.layer.dockerfile)
        if entry.parent_ref:  # from = … given: the FROM must name that parent
            wanted = linked.parent or f"{UPSTREAM_PREFIX}{linked.upstream}"
            if linked.parent in layers or linked.upstream in ups:
                return linked
            if linked.parent is not None and not layers and use.ref is not None \
                    and _names_image_of(use.ref, self.pending[linked.parent].layer):
                # A tag no layer has (an alias, or none: Docker's latest, which nothing
                # publishes): from = says which layer of that image it is.
                return linked
            raise InputError(where, f"line {use.line}: FROM {use.written} does not name "
                             f"{wanted} (layer.toml from): give the FROM that layer's "
                             "image:tag, or drop from = and let the FROM line decide")
        if len(layers) + len(ups) > 1:
            found = [*layers, *(f"upstream:{u}" for u in ups)]
            raise InputError(where, f"line {use.line}: FROM {use.written} matches "
                             f"{', '.join(found)}: set from = … in "
                             f"{_where(entry.layer)} to choose")
        if layers:
            return replace(linked, parent=layers[0])
        if ups:
            self._check_registry_upstream(where, use, ups[0])
            return replace(linked, upstream=ups[0])
        assert use.ref is not None
        ref = use.ref
        name = ref.repository.rsplit("/", 1)[-1]
        same_image = [other for other, e in self.pending.items()
                      if other != lid and _names_image_of(ref, e.layer)]
        ours = (f"; or, if it is layer {same_image[0]} (the image {name} without that tag), "
                f"from = \"{same_image[0]}\" in {_where(entry.layer)}") if same_image else ""
        raise InputError(where, f"line {use.line}: FROM {use.written} matches no layer or "
                         f"upstream: watch it with [upstream.{name}] image = \"{ref.name}\" "
                         f"tag = \"{ref.effective_tag or 'TAG'}\" in config.toml (or names = "
                         f"[\"{use.written}\"] on an upstream that mirrors it){ours}")

    def _check_registry_upstream(self, where: str, use: fromlines.ImageUse, name: str) -> None:
        if self.upstreams[name].kind != "registry":
            raise InputError(where, f"line {use.line}: {use.written} matches git upstream "
                             f"{name!r}, which is not an image")
