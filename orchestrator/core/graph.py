"""The layer hierarchy as a graph: order, descendants, cycles. Pure.

Every layer has at most one parent (a Dockerfile has one base), so the graph
is a forest; functions take the parent map ``{layer: parent or None}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

ParentMap = Mapping[str, str | None]


def find_cycle(parents: ParentMap) -> list[str] | None:
    """Return one cycle as ``[a, b, …, a]`` if the parent links contain one."""
    done: set[str] = set()
    for start in parents:
        path: list[str] = []
        on_path: dict[str, int] = {}
        node: str | None = start
        while node is not None and node in parents and node not in done:
            if node in on_path:
                cycle = path[on_path[node] :]
                # Report it starting from the alphabetically first node so the
                # same cycle always reads the same way.
                first = cycle.index(min(cycle))
                rotated = cycle[first:] + cycle[:first]
                return [*rotated, rotated[0]]
            on_path[node] = len(path)
            path.append(node)
            node = parents[node]
        done.update(path)
    return None


def children_map(parents: ParentMap) -> dict[str, list[str]]:
    kids: dict[str, list[str]] = {node: [] for node in parents}
    for node, parent in parents.items():
        if parent is not None and parent in kids:
            kids[parent].append(node)
    return kids


def topological_order(parents: ParentMap) -> list[str]:
    """Parents before children; siblings keep the map's order. Assumes no cycle."""
    kids = children_map(parents)
    order: list[str] = []
    stack = [n for n, p in reversed(list(parents.items())) if p is None or p not in parents]
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(reversed(kids[node]))
    return order


def descendants(parents: ParentMap, roots: Iterable[str]) -> set[str]:
    """The roots and everything built on them."""
    kids = children_map(parents)
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(kids.get(node, ()))
    return seen


def ancestors(parents: ParentMap, node: str) -> list[str]:
    """Parent, grandparent, … up to the root."""
    chain: list[str] = []
    parent = parents.get(node)
    while parent is not None and parent in parents:
        chain.append(parent)
        parent = parents[parent]
    return chain
