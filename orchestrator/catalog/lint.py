"""Image policy checks over the catalog's Dockerfiles. Pure: texts in, findings out.

Errors (exit 2, and no build starts): an image whose final user is root
without ``allow_root = true``; a ``${BASE_IMAGE}`` Dockerfile that does not
declare the ARG first; a ``latest`` tag; an ARG, ENV or LABEL named like a
secret, or a value of one (or a build arg in ``layer.toml``) carrying a
credential (a URL's ``user:password@``, a ``Bearer`` token). Warnings: an
image the Dockerfile names that no upstream watches (pinned at plan time, but
nothing rebuilds when it moves); ``apk add``
without ``--no-cache``; ``apt-get install`` without removing
/var/lib/apt/lists in the same RUN.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.core import dockerfile as df
from orchestrator.core.imageref import parse_reference
from orchestrator.core.model import Catalog, Layer
from orchestrator.core.redact import redact_text

_SECRET_NAME = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET", re.IGNORECASE)
_ROOT_USERS = {"root", "0"}


@dataclass(frozen=True)
class Finding:
    path: Path
    line: int
    level: str  # "error" | "warning"
    rule: str
    message: str

    def render(self, display: str) -> str:
        return f"{display}:{self.line}: {self.level}: {self.message} [{self.rule}]"


def _final_stage(instructions: Sequence[df.Instruction]) -> Sequence[df.Instruction]:
    starts = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"]
    return instructions[starts[-1]:] if starts else instructions


def final_user(instructions: Sequence[df.Instruction]) -> tuple[str, int] | None:
    """The last USER of the final stage and its line, or None (inherited)."""
    users = [ins for ins in _final_stage(instructions) if ins.keyword == "USER" and ins.args]
    if not users:
        return None
    return users[-1].args[0].split(":")[0].strip(), users[-1].line


def _names(ins: df.Instruction) -> list[str]:
    if ins.keyword == "ARG":
        return [word.split("=", 1)[0] for word in ins.args]
    # ENV/LABEL: the parser gives key, value, key, value (the legacy "KEY value" too).
    return [key.strip("\"'") for key in ins.args[0::2]]


def lint(catalog: Catalog, dockerfiles: Mapping[str, str]) -> list[Finding]:
    """``dockerfiles`` maps layer id to Dockerfile text."""
    parsed = {lid: df.analyze(text) for lid, text in dockerfiles.items()}
    findings: list[Finding] = []
    for lid, layer in catalog.layers.items():
        analysis = parsed.get(lid)
        if analysis is not None:
            findings += _layer_findings(layer, analysis)
        findings += _user_findings(catalog, layer, parsed)
    # Matrix variants share a Dockerfile: report each finding once.
    unique: dict[tuple[Path, int, str, str], Finding] = {}
    for finding in findings:
        unique.setdefault((finding.path, finding.line, finding.rule, finding.message), finding)
    return sorted(unique.values(), key=lambda f: (str(f.path), f.line, f.rule))


def _layer_findings(layer: Layer, analysis: df.Analysis) -> list[Finding]:
    out: list[Finding] = []
    path = layer.dockerfile
    instructions = analysis.instructions
    if not instructions:
        return [Finding(path, 1, "error", "parse", "; ".join(analysis.notes))]
    if (layer.parent is not None or layer.upstream is not None) and layer.parent_by_arg:
        problem = df.base_image_problem(analysis)
        if problem:
            out.append(Finding(path, _line_of(problem), "error", "base-image", problem))
    for base in layer.bases:
        if base.role == "external":
            ref = parse_reference(base.ref)
            if ref.effective_tag is None:
                continue  # pinned by digest in the Dockerfile: nothing moves, nothing to watch
            name = ref.repository.rsplit("/", 1)[-1]
            out.append(Finding(path, _line_naming(analysis, base.text), "warning",
                               "unwatched-base",
                               f"{base.text} is pinned to its digest at plan time but not "
                               f"watched: add [upstream.{name}] image = \"{ref.name}\" "
                               f"tag = \"{ref.effective_tag}\" to config.toml to rebuild "
                               "when it changes"))
    for tag in layer.tags:
        if tag == "latest":
            out.append(Finding(layer.folder / "layer.toml", 1, "error", "no-latest",
                               "tag 'latest' is not allowed: it moves, so nothing can pin it; "
                               "use a version"))
    for name, value in layer.args:
        if redact_text(value) != value:
            out.append(Finding(layer.folder / "layer.toml", 1, "error", "no-secrets",
                               f"args.{name} carries a credential (a URL's user:password@ or "
                               "a token): build args stay in the image's history and "
                               "provenance; mount it as a build secret"))
    for ins in instructions:
        if ins.keyword in ("ARG", "ENV", "LABEL") and redact_text(ins.value) != ins.value:
            out.append(Finding(path, ins.line, "error", "no-secrets",
                               f"{ins.keyword} carries a credential (a URL's user:password@ "
                               "or a token): images keep ARG/ENV/LABEL values; use a build "
                               "secret mount"))
        if ins.keyword in ("ARG", "ENV", "LABEL"):
            for name in _names(ins):
                if _SECRET_NAME.search(name):
                    out.append(Finding(path, ins.line, "error", "no-secrets",
                                       f"{ins.keyword} {name} looks like a secret: images keep "
                                       "ARG/ENV/LABEL values; use a build secret mount"))
        if ins.keyword == "RUN":
            out += _run_findings(path, ins)
    return out


def _run_findings(path: Path, ins: df.Instruction) -> list[Finding]:
    out = []
    script = "\n".join([ins.value, *(doc.content for doc in ins.heredocs)])
    for command in re.split(r"&&|;|\|\||\n", script):
        words = command.split()
        if words[:2] == ["apk", "add"] and "--no-cache" not in words:
            out.append(Finding(path, ins.line, "warning", "apk-no-cache",
                               "apk add without --no-cache leaves the package index in the "
                               "image"))
    if re.search(r"\bapt-get\b.*\binstall\b", script) and \
            "/var/lib/apt/lists" not in script:
        out.append(Finding(path, ins.line, "warning", "apt-lists",
                           "apt-get install without rm -rf /var/lib/apt/lists/* in the same "
                           "RUN leaves the package lists in the image"))
    return out


def _user_findings(catalog: Catalog, layer: Layer,
                   parsed: Mapping[str, df.Analysis]) -> list[Finding]:
    if layer.allow_root:
        return []
    # Walk up until some Dockerfile sets USER; an upstream base counts as root.
    node: Layer | None = layer
    while node is not None:
        known = parsed.get(node.id)
        found = final_user(known.instructions) if known is not None else None
        if found is not None:
            user, line = found
            if user in _ROOT_USERS:
                where = node.dockerfile if node is layer else layer.dockerfile
                what = "" if node is layer else f" (inherited from {node.id})"
                return [Finding(where, line if node is layer else 1, "error", "non-root",
                                f"the image runs as root{what}: end with USER <non-root>, or "
                                "set allow_root = true in layer.toml")]
            return []
        node = catalog.layers.get(node.parent) if node.parent else None
    return [Finding(layer.dockerfile, 1, "error", "non-root",
                    "the image runs as root (no USER in it or its parents): add USER "
                    "<non-root>, or set allow_root = true in layer.toml")]


def _line_naming(analysis: df.Analysis, text: str) -> int:
    return next((use.line for use in analysis.image_uses() if use.resolved == text), 1)


def _line_of(problem: str) -> int:
    match = re.match(r"line (\d+):", problem)
    return int(match.group(1)) if match else 1
