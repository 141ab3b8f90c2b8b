"""What a run covers: which layers, and which upstreams they stand on."""

from __future__ import annotations

from orchestrator.core import graph
from orchestrator.core.model import Catalog, Layer
from orchestrator.core.templates import placeholders


def targets(catalog: Catalog, selected: list[str] | None) -> list[str]:
    """Layers a run covers, parents first: everything, or the selected layers,
    their descendants, and the ancestors they stand on (kept up to date too)."""
    parents = {lid: layer.parent for lid, layer in catalog.layers.items()}
    if not selected:
        return list(catalog.layers)
    wanted = graph.descendants(parents, selected)
    for lid in selected:
        wanted.update(graph.ancestors(parents, lid))
    return [lid for lid in catalog.layers if lid in wanted]


def upstreams_used(layer: Layer) -> set[str]:
    """Upstreams a layer stands on, names in its tags and args, or uses as another
    base (a builder stage's FROM)."""
    names = {layer.upstream} if layer.upstream else set()
    names.update(base.upstream for base in layer.bases if base.upstream)
    for text in (*layer.tags, *(v for _, v in layer.args)):
        for name in placeholders(text):
            parts = name.strip().split(".")
            if len(parts) == 3 and parts[0] == "upstream":
                names.add(parts[1])
    return names
