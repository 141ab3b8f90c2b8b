"""The hierarchy as a picture: Graphviz source for the layers and their
upstreams, each node showing its state (in colour and in words), its tags and
its last build. Pure: Graphviz's ``dot`` lays it out (the web page and
``graph --format svg`` run it).

Every layer node has four text lines in a fixed order (name, state, tags, last
build) and the id ``layer-<id>``, so a page can restate a node live without a
new layout; nodes are wide enough for any state's words.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

STATE_WIDTH = 30  # characters of a state's words a node has room for
# (fill, outline) per state; the page's stylesheet uses the same colours.
COLOURS = {
    "up_to_date": ("#d8f0d8", "#2e7d32"), "built": ("#d8f0d8", "#2e7d32"),
    "reused": ("#d8f0d8", "#2e7d32"), "building": ("#ffefb8", "#a15c00"),
    "queued": ("#dbe8f7", "#1f5fa8"), "waiting": ("#dbe8f7", "#1f5fa8"),
    "stale": ("#fde2c4", "#b4530b"), "failed": ("#f8cfcf", "#b71c1c"),
    "cancelled": ("#f8cfcf", "#b71c1c"),
}
NEUTRAL = ("#ececec", "#6b6b6b")
STATE_WORDS = {"up_to_date": "up to date", "built": "up to date", "reused": "up to date",
               "failed": "FAILED", "unknown": "…"}
# Neutral first: a state's rule, as specific, comes later and wins.
STYLE = "\n".join(
    [".layer text:first-of-type { font-weight: bold; }",
     f".layer path, .layer polygon {{ fill: {NEUTRAL[0]}; stroke: {NEUTRAL[1]}; }}"]
    + [f".state-{state} path, .state-{state} polygon {{ fill: {fill}; stroke: {line}; }}"
       for state, (fill, line) in COLOURS.items()])


@dataclass(frozen=True)
class PictureLayer:
    id: str
    parent: str | None
    upstream: str | None
    tags: tuple[str, ...]
    state: str  # a word of core.runboard.STATES
    state_text: str = ""  # default: the state's own words
    last_build: float | None = None  # when the layer's image was last built


def node_id(layer: str) -> str:
    return f"layer-{layer}"


def state_words(state: str, text: str = "") -> str:
    words = text or STATE_WORDS.get(state, state.replace("_", " "))
    return cut(words, STATE_WIDTH)


def cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def built_words(at: float | None) -> str:
    if at is None:
        return "never built"
    return "built " + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))


def tags_words(tags: Iterable[str]) -> str:
    listed = ", ".join(tags)
    return cut(f"tags: {listed}" if listed else "no tags", STATE_WIDTH)


def _quoted(text: str) -> str:
    """A DOT double-quoted string (a label's line breaks already as ``\\n``)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _label(lines: Iterable[str]) -> str:
    escaped = (line.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
               for line in lines)
    return '"' + "\\n".join(escaped) + '"'


def dot_source(layers: Iterable[PictureLayer], upstreams: Mapping[str, str],
               *, link: str | None = None) -> str:
    """Graphviz source, left to right. ``upstreams``: name -> value in use.
    ``link``: a URL prefix each layer node links to (``/layers/``)."""
    out = ["digraph hierarchy {",
           '  graph [rankdir=LR, nodesep=0.25, ranksep=0.6, bgcolor="transparent", '
           'fontname="DejaVu Sans"];',
           '  node [shape=box, style="rounded,filled", fontname="DejaVu Sans", fontsize=10, '
           'width=2.5, margin="0.12,0.05"];',
           '  edge [color="#6b6b6b", arrowsize=0.7];']
    layers = list(layers)
    used = {layer.upstream for layer in layers if layer.upstream}
    for name in sorted(used):
        value = upstreams.get(name, "not resolved")
        out.append(f"  {_quoted('upstream:' + name)} [id={_quoted('upstream-' + name)}, "
                   f'class="upstream", style="rounded,dashed", fillcolor="white", '
                   f"label={_label([f'upstream {name}', cut(value, STATE_WIDTH)])}];")
    for layer in layers:
        fill, line = COLOURS.get(layer.state, NEUTRAL)
        attrs = [f"id={_quoted(node_id(layer.id))}",
                 f"class={_quoted(f'layer state-{layer.state}')}",
                 f'fillcolor="{fill}"', f'color="{line}"',
                 "label=" + _label([layer.id, state_words(layer.state, layer.state_text),
                                    tags_words(layer.tags), built_words(layer.last_build)])]
        if link is not None:
            attrs.append(f"URL={_quoted(link + quote(layer.id, safe=''))}")
            attrs.append(f"tooltip={_quoted(layer.id)}")
        out.append(f"  {_quoted(layer.id)} [{', '.join(attrs)}];")
    ids = {layer.id for layer in layers}
    for layer in layers:
        if layer.parent in ids:
            out.append(f"  {_quoted(layer.parent or '')} -> {_quoted(layer.id)};")
        elif layer.upstream:
            out.append(f"  {_quoted('upstream:' + layer.upstream)} -> {_quoted(layer.id)};")
    out.append("}")
    return "\n".join(out)


def with_style(svg: str) -> str:
    """The stylesheet inside the SVG itself, so a file opened alone looks like the page."""
    head, sep, rest = svg.partition("<g id=\"graph0\"")
    if not sep:
        return svg
    return f"{head}<style>\n{STYLE}\n</style>\n{sep}{rest}"
