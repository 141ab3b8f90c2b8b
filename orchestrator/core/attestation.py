"""Which of the papers attached to an image count, and which one is shown. Pure.

Anyone who can push to a repository can attach artifacts to any image in it,
and sets their annotations (``created`` included) as they like. So nothing
here looks at annotations. A statement counts for an image only if its own
``subject`` is that image's digest (a statement replayed from another image,
or from another platform of the same index, does not), and, when a key is
given, only if its signature verifies with it: the subject is inside what
was signed. Among those that count, the one shown is the build that
finished last by the statement's own (signed) ``finishedOn``. Statements
that count must agree on what the image was made of (the build key and the
inputs pinned by digest): a reproducible rebuild adds a second statement
that agrees; one that disagrees is a conflict, listed, and fatal under
``--verify``.

An SBOM counts when the statement shown names its digest (``byproducts``);
without such a statement (older images, provenance turned off), when its
``metadata.component`` is the image and every such SBOM lists the same
packages.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from orchestrator.core.provenance import ProvenanceSummary
from orchestrator.core.redact import redact_text

_EPOCH = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Attached:
    """One statement found among an image's referrers, opened as far as it could be."""

    artifact: str  # the artifact manifest's digest
    summary: ProvenanceSummary | None  # None: unreadable, or its signature failed
    status: str  # "unsigned" | "signed" | "verified" | "rejected"
    problem: str | None = None  # why it could not be opened


@dataclass(frozen=True)
class Judgement:
    chosen: Attached | None
    counted: tuple[Attached, ...] = ()
    ignored: tuple[tuple[str, str], ...] = ()  # (artifact digest, why it does not count)
    conflicts: tuple[Attached, ...] = ()  # counted, but made of other inputs than chosen

    def ignored_text(self) -> str:
        # Shown in errors: a problem's text may quote what someone else attached.
        return redact_text("; ".join(f"{digest[:19]}… {why}" for digest, why in self.ignored))


def inputs_of(summary: ProvenanceSummary) -> tuple[Any, ...]:
    """What a statement says the image was made of; names and URIs aside (a remote's
    URL may be written differently by two versions), digests only."""
    return (summary.build_key, summary.platform, tuple(sorted(summary.build_args.items())),
            tuple(sorted((d.name, tuple(sorted(d.digest.items())))
                         for d in summary.dependencies)))


def judge(found: Sequence[Attached], subject: str, *, key: bool) -> Judgement:
    """Sort ``found`` (the statements attached to the image ``subject``) into those
    that count and those that do not; ``key``: a key was given, so only verified
    statements count."""
    counted: list[Attached] = []
    ignored: list[tuple[str, str]] = []
    for item in found:
        why = _why_not(item, subject, key=key)
        if why is None:
            counted.append(item)
        else:
            ignored.append((item.artifact, why))
    if not counted:
        return Judgement(None, (), tuple(ignored))
    chosen = max(counted, key=_order)
    assert chosen.summary is not None
    made_of = inputs_of(chosen.summary)
    conflicts = tuple(c for c in sorted(counted, key=_order, reverse=True)
                      if c.summary is not None and inputs_of(c.summary) != made_of)
    return Judgement(chosen, tuple(counted), tuple(ignored), conflicts)


def _why_not(item: Attached, subject: str, *, key: bool) -> str | None:
    if item.summary is None:
        return item.problem or "unreadable"
    if key and item.status != "verified":
        return "unsigned, so it cannot be verified with the key"
    if item.summary.subject_digest != subject:
        platform = f", {item.summary.platform}" if item.summary.platform else ""
        return (f"its subject is {item.summary.subject_name}@{item.summary.subject_digest}"
                f"{platform}, not this image")
    return None


def _order(item: Attached) -> tuple[datetime, str]:
    summary = item.summary
    finished = summary.finished if summary is not None and summary.finished else _EPOCH
    return finished, item.artifact


# --- SBOMs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SbomChoice:
    document: bytes | None
    bound: bool = False  # named by the statement shown
    problem: str | None = None  # why none could be chosen
    ignored: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def choose_sbom(documents: Sequence[tuple[str, bytes]], subject: str,
                named: str | None) -> SbomChoice:
    """``documents``: (blob digest, bytes) of the SBOMs attached to ``subject``;
    ``named``: the digest the statement shown names, if any."""
    if named is not None:
        for digest, document in documents:
            if digest == named:
                return SbomChoice(document, bound=True)
        return SbomChoice(None, problem=f"the SBOM its provenance names ({named[:19]}…) is "
                          "not attached")
    matching: list[tuple[str, bytes]] = []
    ignored: list[tuple[str, str]] = []
    for digest, document in documents:
        about = _component_digest(document)
        if about == subject:
            matching.append((digest, document))
        else:
            ignored.append((digest, f"it describes {about or 'no image'}, not this image"))
    if not matching:
        return SbomChoice(None, ignored=tuple(ignored))
    contents = {_packages(document) for _, document in matching}
    if len(contents) > 1:
        return SbomChoice(None, problem=f"{len(matching)} SBOMs describe this image and list "
                          "different packages; no provenance statement names one",
                          ignored=tuple(ignored))
    return SbomChoice(min(matching)[1], ignored=tuple(ignored))


def _component_digest(document: bytes) -> str | None:
    try:
        component = (json.loads(document).get("metadata") or {}).get("component") or {}
    except (ValueError, AttributeError):
        return None
    ref = component.get("bom-ref") if isinstance(component, dict) else None
    return ref if isinstance(ref, str) else None


def _packages(document: bytes) -> frozenset[tuple[str, str]]:
    try:
        components = json.loads(document).get("components") or []
    except (ValueError, AttributeError):
        return frozenset()
    return frozenset((str(c.get("purl") or c.get("name")), str(c.get("version")))
                     for c in components if isinstance(c, dict))
