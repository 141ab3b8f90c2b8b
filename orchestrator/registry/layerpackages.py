"""Package records read from an image's layer blobs, starting from an ancestor's record.

An image's layers are its parent's layers plus its own, so a record for the
parent (``core.packages.PackageRecord``) stands in for every layer below: only
the image's own layers are read, and the parent's ``PathFacts`` are what their
whiteouts and files change. Where no ancestor has a record the read starts at
the bottom, and ``boundaries`` (how many layers each ancestor has) let the same
single pass produce each ancestor's record on the way up, each attributed
exactly: a package belongs to the ancestor whose layers first hold its version.

Blocking and without network, like ``imagefs``: the caller fetches the blobs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import IO

from orchestrator.core.packages import (
    RECORD_PATTERNS,
    RECORD_PRESENCE_PATTERNS,
    Installer,
    PackageId,
    PackageRecord,
    PathFacts,
    attribute,
    facts_of,
    versions,
)
from orchestrator.core.sbom import Package
from orchestrator.registry.imagefs import (
    MAX_FILE_SIZE,
    MAX_TOTAL_SIZE,
    ImageFsError,
    SelectedFile,
    select_files,
)


@dataclass(frozen=True)
class Boundary:
    """An ancestor image: its layers are the first ``count`` of the image's."""

    owner: str  # "pyenv", "upstream:debian"
    digest: str  # its manifest digest, what its record is stored under
    count: int


def read_records(blobs: Iterable[IO[bytes]], *, layers: Sequence[str], digest: str, owner: str,
                 start: PackageRecord | None = None, boundaries: Sequence[Boundary] = (),
                 max_file_size: int = MAX_FILE_SIZE,
                 max_total_size: int = MAX_TOTAL_SIZE) -> list[PackageRecord]:
    """Records for each ancestor in ``boundaries`` above ``start`` and, last, for the
    image (``digest``, ``owner``). ``blobs`` are the image's layers after ``start``'s,
    oldest first; ``layers`` all of its layer digests."""
    offset = len(start.layers) if start is not None else 0
    if start is not None and tuple(layers[:offset]) != start.layers:
        raise ValueError(f"{start.digest}'s layers are not the first {offset} of {digest}'s")
    marks = sorted((b for b in boundaries if offset < b.count < len(layers)),
                   key=lambda b: b.count)
    reader = _Reader(layers, offset, marks, owner, start)
    lower = {path: _standing_in(path, facts) for path, facts in reader.facts.items()}
    select_files(blobs, RECORD_PATTERNS, presence=RECORD_PRESENCE_PATTERNS,
                 max_file_size=max_file_size, max_total_size=max_total_size,
                 lower=lower, on_layer=reader.layer_done)
    if reader.position != len(layers):
        raise ImageFsError(f"{digest}: read {reader.position - offset} layers, expected "
                           f"{len(layers) - offset}")
    reader.records.append(PackageRecord(digest, owner, tuple(layers), reader.facts,
                                        reader.installers, reader.base))
    return reader.records


class _Reader:
    """Follows the read one image layer at a time: facts, installers, records."""

    def __init__(self, layers: Sequence[str], offset: int, marks: list[Boundary], owner: str,
                 start: PackageRecord | None) -> None:
        self.layers = layers
        self.position = offset  # absolute index of the next layer
        self.offset = offset
        self.marks = marks
        self.owner = owner
        self.facts: dict[str, PathFacts] = dict(start.files) if start else {}
        self.installers: dict[PackageId, Installer] = dict(start.installers) if start else {}
        self.versions = versions(self.facts)
        self.base = start.digest if start else None
        self.records: list[PackageRecord] = []

    def owner_at(self, position: int) -> str:
        for mark in self.marks:
            if position < mark.count:
                return mark.owner
        return self.owner

    def layer_done(self, index: int, state: Mapping[str, SelectedFile]) -> None:
        position = self.offset + index
        facts: dict[str, PathFacts] = {}
        for path, selected in state.items():
            if selected.layer != index:
                facts[path] = self.facts[path]
            elif selected.kind == "hardlink" and selected.data is None \
                    and selected.link_target in self.facts:
                # A link to a file read from the record (no body at hand): same content.
                linked = self.facts[selected.link_target]
                facts[path] = PathFacts("hardlink", _moved(linked, path), linked.text,
                                        selected.link_target, linked.held)
            else:
                facts[path] = facts_of(path, selected.kind, selected.data,
                                       selected.link_target)
        self.installers = attribute(self.versions, self.installers, facts,
                                    Installer(self.owner_at(position), self.layers[position]))
        self.versions = versions(facts)
        self.facts = facts
        self.position = position + 1
        while self.marks and self.marks[0].count == self.position:
            mark = self.marks.pop(0)
            self.records.append(PackageRecord(mark.digest, mark.owner,
                                              tuple(self.layers[:mark.count]), facts,
                                              self.installers, self.base))
            self.base = mark.digest


def _moved(facts: PathFacts, path: str) -> tuple[Package, ...]:
    return tuple(replace(p, locations=("/" + path,)) for p in facts.packages)


def _standing_in(path: str, facts: PathFacts) -> SelectedFile:
    """A recorded path as imagefs's lower state: its body is not needed again."""
    kind = "file" if facts.kind == "present" else facts.kind
    return SelectedFile(path, kind, None, 0, 0o644, -1, facts.target)
