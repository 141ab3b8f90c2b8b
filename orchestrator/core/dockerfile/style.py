"""How a Dockerfile takes its parent: through ``ARG BASE_IMAGE`` or by name. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from orchestrator.core.dockerfile.stages import Analysis, Stage

BASE_IMAGE = "BASE_IMAGE"
_BASE_REF = re.compile(r"\$(?:\{BASE_IMAGE\}|BASE_IMAGE)")
_BASE_IMAGE_VAR = re.compile(r"\$(?:\{BASE_IMAGE(?:[:?+\-}])|BASE_IMAGE\b)")


@dataclass(frozen=True)
class ParentStyle:
    """``base_image``: the first FROM is ``${BASE_IMAGE}`` (the orchestrator passes the
    parent as a build arg). ``literal``: FROM lines name images; ``refs`` lists the
    distinct external ones (normalised), empty when every stage is scratch or a stage."""

    kind: Literal["base_image", "literal"]
    refs: tuple[str, ...]
    problem: str | None = None


def takes_base_image(stage: Stage) -> bool:
    """The stage's FROM uses the BASE_IMAGE variable."""
    return bool(_BASE_IMAGE_VAR.search(stage.image))


def base_image_problem(analysis: Analysis) -> str | None:
    """Why this Dockerfile cannot take its parent through BASE_IMAGE, or None."""
    if not analysis.stages:
        return "no FROM instruction"
    first = analysis.stages[0]
    if not _BASE_REF.fullmatch(first.image):
        return (f"line {first.line}: the first FROM must be FROM ${{BASE_IMAGE}} so "
                "the orchestrator can pass the parent pinned by digest")
    if BASE_IMAGE not in analysis.args:
        return f"line {first.line}: declare ARG BASE_IMAGE before the first FROM"
    return None


def parent_style(analysis: Analysis) -> ParentStyle:
    refs = tuple(ref.normalized() for ref in analysis.from_refs())
    if any(takes_base_image(s) for s in analysis.stages):
        return ParentStyle("base_image", refs, base_image_problem(analysis))
    if not analysis.stages:
        return ParentStyle("literal", (), "; ".join(analysis.notes) or "no FROM instruction")
    problems = [*analysis.notes,
                *(f"line {s.line}: {s.base.problem}" for s in analysis.stages if s.base.problem)]
    return ParentStyle("literal", refs, "; ".join(problems) or None)
