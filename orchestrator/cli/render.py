"""Human and JSON renderings of graphs, plans and run reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.build.results import LayerResult, RunReport
from orchestrator.build.scheduler import NodeResult
from orchestrator.core import graph
from orchestrator.core.model import Catalog, Outcome


def _parent_label(catalog: Catalog, lid: str) -> str:
    layer = catalog.layers[lid]
    return f"upstream:{layer.upstream}" if layer.upstream else ""


def graph_tree(catalog: Catalog) -> str:
    parents = {lid: layer.parent for lid, layer in catalog.layers.items()}
    kids = graph.children_map(parents)
    lines: list[str] = []

    def walk(node: str, prefix: str, last: bool, top: bool) -> None:
        label = node
        if top and catalog.layers[node].upstream:
            label = f"{node}  (from {_parent_label(catalog, node)})"
        lines.append(label if top else f"{prefix}{'└── ' if last else '├── '}{label}")
        child_prefix = "" if top else prefix + ("    " if last else "│   ")
        for i, child in enumerate(kids[node]):
            walk(child, child_prefix, i == len(kids[node]) - 1, False)

    for root in (lid for lid, p in parents.items() if p is None):
        walk(root, "", True, True)
    return "\n".join(lines)


def graph_dot(catalog: Catalog) -> str:
    lines = ["digraph layers {", "  rankdir=LR;"]
    for lid, layer in catalog.layers.items():
        lines.append(f'  "{lid}";')
        if layer.parent:
            lines.append(f'  "{layer.parent}" -> "{lid}";')
        elif layer.upstream:
            lines.append(f'  "upstream:{layer.upstream}" [shape=box, style=dashed];')
            lines.append(f'  "upstream:{layer.upstream}" -> "{lid}";')
    lines.append("}")
    return "\n".join(lines)


def graph_svg(catalog: Catalog, state_db: Path) -> str:
    """The web page's picture without a daemon: each layer's last build from
    the state database (read-only), laid out by Graphviz's dot."""
    import graphviz

    from orchestrator.build.state.readonly import History
    from orchestrator.core.errors import OrchestratorError
    from orchestrator.core.picture import PictureLayer, dot_source, with_style
    from orchestrator.core.runboard import upstream_value

    history = History(state_db)
    built, outcomes = history.built_at(), history.last_outcomes()
    upstreams = {name: upstream_value(tag, digest)
                 for name, (tag, digest) in history.upstreams().items()}
    layers = []
    for lid, layer in catalog.layers.items():
        outcome = outcomes.get(lid)
        state, words = ("unknown", "no build yet") if outcome is None and lid not in built \
            else ("failed", "last build FAILED") if outcome == "failed" \
            else ("built", "last build ok")
        layers.append(PictureLayer(lid, layer.parent, layer.upstream, layer.tags, state, words,
                                   built.get(lid)))
    try:
        svg = graphviz.pipe("dot", "svg", dot_source(layers, upstreams).encode())
    except graphviz.ExecutableNotFound:
        raise OrchestratorError("graph --format svg needs Graphviz's dot on PATH "
                                "(Debian: apt-get install graphviz)") from None
    return with_style(svg.decode())


def graph_json(catalog: Catalog) -> str:
    return json.dumps({"layers": [
        {"id": lid, "name": layer.name, "image": layer.image, "parent": layer.parent,
         "upstream": layer.upstream, "tags": list(layer.tags),
         "matrix": dict(layer.variant), "folder": str(layer.folder)}
        for lid, layer in catalog.layers.items()
    ]}, indent=2)


def _why(result: NodeResult[LayerResult]) -> str:
    if result.value is not None:
        return result.value.decision.describe()
    if result.skipped_because:
        return result.skipped_because
    return str(result.error) if result.error else ""


def plan_text(report: RunReport) -> str:
    width = max((len(lid) for lid in report.results), default=0)
    lines = []
    for lid, result in report.results.items():
        if result.outcome is Outcome.FAILED:
            lines.append(f"{lid:<{width}}  cannot plan: {result.error}")
        elif result.value is not None and result.value.decision.build:
            lines.append(f"{lid:<{width}}  build: {result.value.decision.describe()}")
        elif result.outcome is Outcome.SKIPPED:
            lines.append(f"{lid:<{width}}  cannot plan: {result.skipped_because}")
        else:
            lines.append(f"{lid:<{width}}  up to date")
    n = sum(1 for r in report.results.values() if r.value and r.value.decision.build)
    lines.append(f"{n} of {len(report.results)} layers would build")
    lines += [f"note: {note}" for note in report.notes]
    if report.packages:
        from orchestrator.build.packagefixes import render_notes

        lines += render_notes(report.packages)
    return "\n".join(lines)


def report_json(report: RunReport) -> str:
    layers: list[dict[str, Any]] = []
    for lid, result in report.results.items():
        entry: dict[str, Any] = {"layer": lid, "outcome": result.outcome.value,
                                 "why": _why(result)}
        value = result.value
        if value is not None:
            entry.update({
                "build": value.decision.build,
                "reason": value.decision.reason.name.lower() if value.decision.reason else None,
                "detail": value.decision.detail, "digest": value.digest,
                "ref": value.base_ref, "build_key": value.key, "build_id": value.build_id,
                "log": value.log_path, "started": value.started, "finished": value.finished,
                "builder": value.builder, "steps": dict(value.steps),
            })
        if result.error is not None:
            entry["error"] = str(result.error)
            tail = getattr(result.error, "log_tail", None)
            if tail:
                entry["log_tail"] = tail
        layers.append(entry)
    upstreams = {name: {"tag": u.tag, "digest": u.digest, "ref": u.ref}
                 for name, u in report.upstreams.items()}
    return json.dumps({"ok": report.ok, "layers": layers, "upstreams": upstreams,
                       "package_fixes": report.packages}, indent=2)


def build_text(report: RunReport) -> str:
    width = max((len(lid) for lid in report.results), default=0)
    lines = []
    for lid, result in report.results.items():
        value = result.value
        if result.outcome is Outcome.BUILT and value is not None:
            took = f"{value.finished - value.started:.1f}s" if value.started and value.finished \
                else ""
            lines.append(f"built    {lid:<{width}}  {value.decision.describe()}; {took} on "
                         f"{value.builder}  {value.base_ref}")
        elif result.outcome is Outcome.REUSED and value is not None:
            lines.append(f"ok       {lid:<{width}}  up to date  {value.base_ref}")
        elif result.outcome is Outcome.FAILED:
            lines.append(f"FAILED   {lid:<{width}}  {result.error}")
            tail = getattr(result.error, "log_tail", "")
            # Our own echo of the builder's command line is in the log file, not here.
            lines.extend(f"         | {line}" for line in tail.splitlines()
                         if not line.startswith("$ "))
        elif result.outcome is Outcome.SKIPPED:
            lines.append(f"skipped  {lid:<{width}}  {result.skipped_because}")
        else:
            lines.append(f"{result.outcome.value:<8} {lid}")
    counts = {o: len(report.by_outcome(o)) for o in Outcome}
    summary = (f"{counts[Outcome.BUILT]} built, {counts[Outcome.REUSED]} up to date, "
               f"{counts[Outcome.FAILED]} failed, {counts[Outcome.SKIPPED]} skipped")
    if counts[Outcome.CANCELLED]:
        summary += f", {counts[Outcome.CANCELLED]} cancelled"
    lines.append(summary)
    return "\n".join(lines)
