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
--from=…``), in a ``${BASE_IMAGE}`` Dockerfile too, is an upstream when one
matches, else an *external* base: it is resolved to a digest at plan time and
enters the key, and lint says how to watch it. Ambiguity, or a parent that
matches nothing, is an error naming the files.

Names are worked out twice, by the same code. When the catalog loads, with the
args whose values are known then (an arg filled from an upstream value is not
yet), to link the graph; and for each build (:func:`build_bases`), with the
args, platform and upstream values the engine will get, which decide what is
pinned and what enters the key. A name that depends on an arg known only at
build time is checked then; when it is the parent's, ``from =`` must say which
parent it is.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace

from orchestrator.catalog.tomlfile import display
from orchestrator.core import dockerfile as df
from orchestrator.core.errors import InputError
from orchestrator.core.imageref import Reference, parse_reference
from orchestrator.core.model import UPSTREAM_PREFIX, BaseUse, Catalog, Layer, UpstreamSpec
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


class BaseMatcher:
    """Which catalog layers and upstreams an image reference stands for."""

    def __init__(self, layers: Mapping[str, Layer],
                 upstreams: Mapping[str, UpstreamSpec]) -> None:
        self.layers = layers
        self.upstreams = upstreams

    def layers_for(self, ref: Reference) -> list[str]:
        return [lid for lid, layer in self.layers.items() if _matches_layer(ref, layer)]

    def upstreams_for(self, ref: Reference) -> list[str]:
        return [name for name, spec in self.upstreams.items() if _matches_upstream(ref, spec)]

    def bases(self, layer: Layer, analysis: df.Analysis, *,
              deferred: Collection[str] = (),
              available: Collection[str] | None = None) -> tuple[BaseUse, ...]:
        """Every image ``layer`` (parent already linked) uses besides a ``${BASE_IMAGE}``
        parent, each once, and what it stands for. ``deferred``: args whose values
        are not known yet (names made from them are skipped); ``available``: the
        upstreams resolved for this run (another one that matches is an external
        base), None for all."""
        where = display(layer.dockerfile)
        parent_key: str | None = None
        parent_use: df.ImageUse | None = None
        by_arg = {id(s.base) for s in analysis.stages if df.takes_base_image(s)}
        if not by_arg and analysis.final is not None:
            parent_use = analysis.root_of(analysis.final).base
            if parent_use.ref is not None and not parent_use.args & set(deferred):
                parent_key = parent_use.ref.normalized()
        bases: list[BaseUse] = []
        seen: set[tuple[str, str]] = set()
        for use in analysis.image_uses():
            if id(use) in by_arg or use.args & set(deferred):
                continue
            if use.problem:
                raise InputError(where, f"line {use.line}: {use.problem}")
            if use.ref is None or use.resolved is None:
                continue
            text, key = use.resolved, use.ref.normalized()
            if (text, key) in seen:
                continue
            seen.add((text, key))
            if key == parent_key:
                self._check_parent(layer, use)
                bases.append(BaseUse(text, key, "parent"))
                continue
            layers = [other for other in self.layers_for(use.ref) if other != layer.id]
            ups = [u for u in self.upstreams_for(use.ref) if available is None or u in available]
            if layers:
                raise InputError(where, f"line {use.line}: {use.written} is layer {layers[0]}, "
                                 "but a layer builds on one layer only (its parent, the final "
                                 "stage's base); use another image for this stage")
            if ups:
                self.check_registry_upstream(where, use, ups[0])
                bases.append(BaseUse(text, key, "upstream", ups[0]))
            else:
                bases.append(BaseUse(text, key, "external"))
        return tuple(bases)

    def _check_parent(self, layer: Layer, use: df.ImageUse) -> None:
        """The final stage's image is the layer's parent, with these args too."""
        assert use.ref is not None
        if layer.parent in self.layers_for(use.ref) or \
                layer.upstream in self.upstreams_for(use.ref):
            return
        parent = self.layers.get(layer.parent) if layer.parent is not None else None
        if parent is not None and not self.layers_for(use.ref) and \
                _names_image_of(use.ref, parent):
            return  # the parent's image by a tag no layer has (latest): from = said which
        wanted = layer.parent or f"{UPSTREAM_PREFIX}{layer.upstream}"
        via = f" ({use.written} with the build's args)" if use.written != use.resolved else ""
        raise InputError(display(layer.dockerfile), f"line {use.line}: FROM {use.resolved}{via} "
                         f"does not name {wanted}, the layer's parent: make the FROM name it, "
                         f"or change from = in {_where(layer)}")

    def check_registry_upstream(self, where: str, use: df.ImageUse, name: str) -> None:
        if self.upstreams[name].kind != "registry":
            raise InputError(where, f"line {use.line}: {use.written} matches git upstream "
                             f"{name!r}, which is not an image")


def build_bases(catalog: Catalog, layer: Layer, dockerfile_text: str, args: Mapping[str, str],
                *, platform: str, build_platform: str,
                available: Collection[str]) -> tuple[BaseUse, ...]:
    """The layer's bases as one build's engine sees them: the Dockerfile it gets,
    with the build args it gets (upstream values filled in), for ``platform``."""
    analysis = df.analyze(dockerfile_text, args, platform=platform,
                          build_platform=build_platform)
    if analysis.final is None:
        raise InputError(display(layer.dockerfile), "; ".join(analysis.notes))
    return BaseMatcher(catalog.layers, catalog.upstreams).bases(layer, analysis,
                                                                 available=available)


class Linker:
    def __init__(self, pending: Mapping[str, Pending],
                 upstreams: Mapping[str, UpstreamSpec], *,
                 platform: str = df.DEFAULT_PLATFORM) -> None:
        self.pending = pending
        self.upstreams = upstreams
        self.platform = platform  # the platform a layer without its own is linked for
        self.matcher = BaseMatcher({lid: e.layer for lid, e in pending.items()}, upstreams)
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
        return self.matcher.layers_for(ref)

    def upstreams_for(self, ref: Reference) -> list[str]:
        return self.matcher.upstreams_for(ref)

    def link(self) -> dict[str, Layer]:
        return {lid: self._link(lid, entry) for lid, entry in self.pending.items()}

    def _link(self, lid: str, entry: Pending) -> Layer:
        layer, ref = entry.layer, entry.parent_ref
        # Args filled from upstream values are known only when a run resolves them.
        deferred = frozenset(k for k, v in layer.args if placeholders(v))
        args = {k: v for k, v in layer.args if k not in deferred}
        analysis = df.analyze(entry.dockerfile_text, args,
                              platform=layer.platforms[0] if layer.platforms else self.platform)
        style = df.parent_style(analysis)
        if analysis.notes:
            raise InputError(display(layer.dockerfile), "; ".join(analysis.notes))
        if style.kind == "base_image":
            if not ref:
                raise InputError(_where(layer), "from: missing: this Dockerfile takes its parent "
                                 "through ARG BASE_IMAGE, so say which layer "
                                 "(from = \"LAYER\" or \"upstream:NAME\")")
            if style.problem:
                raise InputError(display(layer.dockerfile), style.problem)
            linked = self._explicit(layer, ref)
        else:
            linked = replace(self._literal(lid, entry, analysis, deferred), parent_in_from=True)
        return replace(linked, bases=self.matcher.bases(linked, analysis, deferred=deferred))

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

    def _literal(self, lid: str, entry: Pending, analysis: df.Analysis,
                 deferred: frozenset[str]) -> Layer:
        layer, where = entry.layer, display(entry.layer.dockerfile)
        final = analysis.final
        if final is None:
            raise InputError(where, "; ".join(analysis.notes) or "no FROM instruction")
        for stage in analysis.stages:
            if stage.base.problem and not stage.base.args & deferred:
                raise InputError(where, f"line {stage.line}: {stage.base.problem}")
        root = analysis.root_of(final).base
        linked = self._explicit(layer, entry.parent_ref) if entry.parent_ref else layer
        if root.args & deferred:
            # Known only when a run fills the args in: the build checks it then.
            if not entry.parent_ref:
                names = ", ".join(sorted(root.args & deferred))
                raise InputError(where, f"line {root.line}: FROM {root.written} depends on "
                                 f"{names}, which {_where(layer)} fills from an upstream "
                                 "value when a run starts: set from = \"LAYER\" or "
                                 "\"upstream:NAME\" there to say which parent it names")
            return linked
        if root.ref is not None and root.ref.digest is None:
            layers = [other for other in self.layers_for(root.ref) if other != lid]
            linked = self._literal_parent(entry, linked, root, layers,
                                          self.upstreams_for(root.ref))
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
        return linked

    def _literal_parent(self, entry: Pending, linked: Layer, use: df.ImageUse,
                        layers: list[str], ups: list[str]) -> Layer:
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
            self.matcher.check_registry_upstream(where, use, ups[0])
            return replace(linked, upstream=ups[0])
        assert use.ref is not None
        ref = use.ref
        name = ref.repository.rsplit("/", 1)[-1]
        same_image = [other for other, e in self.pending.items()
                      if other != entry.layer.id and _names_image_of(ref, e.layer)]
        ours = (f"; or, if it is layer {same_image[0]} (the image {name} without that tag), "
                f"from = \"{same_image[0]}\" in {_where(entry.layer)}") if same_image else ""
        raise InputError(where, f"line {use.line}: FROM {use.written} matches no layer or "
                         f"upstream: watch it with [upstream.{name}] image = \"{ref.name}\" "
                         f"tag = \"{ref.effective_tag or 'TAG'}\" in config.toml (or names = "
                         f"[\"{use.written}\"] on an upstream that mirrors it){ours}")
