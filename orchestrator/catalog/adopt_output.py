"""What ``orchestrator init`` prints and writes for an :class:`Adoption`: the summary,
``config.toml`` and one ``layers/<name>/layer.toml`` per Dockerfile (never over a file)."""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath

from orchestrator.catalog.adopt import AdoptedLayer, Adoption
from orchestrator.catalog.tomlfile import display
from orchestrator.core.errors import InputError
from orchestrator.core.imageref import DEFAULT_TAG
from orchestrator.core.model import UPSTREAM_PREFIX


def summary(adoption: Adoption) -> str:
    """The inferred hierarchy as an indented tree, with upstreams at the roots."""
    kids: dict[str | None, list[AdoptedLayer]] = {}
    for layer in adoption.layers:
        key = layer.parent if layer.parent is not None else (
            UPSTREAM_PREFIX + layer.upstream if layer.upstream is not None else None)
        kids.setdefault(key, []).append(layer)
    how = (f" (named by {adoption.library})" if adoption.library else
           " (read as one repository)" if adoption.reading == "repository" else "")
    lines = [f"{adoption.root}: {len(adoption.layers)} Dockerfiles, "
             f"{len(adoption.upstreams)} upstream image(s){how}"]

    def tree(key: str, depth: int) -> None:
        for layer in kids.get(key, []):
            tags = ", ".join(layer.tags) or "no tag"
            lines.append(f"{'  ' * depth}{layer.name}  {layer.image} [{tags}]  "
                         f"({layer.dockerfile})")
            tree(layer.name, depth + 1)

    for up in adoption.upstreams:
        track = f", track suggestion: {up.track}" if up.track else ""
        users = [layer.name for layer in adoption.layers if up.name in layer.upstream_needs]
        also = f"; also used by {', '.join(users)}" if users else ""
        lines.append(f"upstream {up.name}: {up.image}:{up.tag}{track}{also}")
        tree(UPSTREAM_PREFIX + up.name, 1)
    if None in kids:
        lines.append("no parent (FROM scratch, or not inferred):")
        for layer in kids[None]:
            lines.append(f"  {layer.name}  {layer.image}  ({layer.dockerfile})")
            tree(layer.name, 2)
    notes = [*adoption.notes,
             *(f"{layer.dockerfile}: {note}" for layer in adoption.layers for note in layer.notes)]
    if notes:
        lines.append("notes:")
        lines += [f"  {note}" for note in notes]
    if adoption.unmatched:
        lines.append(f"not matched ({len(adoption.unmatched)}), each with the line that "
                     "fixes it:")
        for item in adoption.unmatched:
            lines += [f"  {item.where}: {item.what}", f"    fix: {item.fix}"]
    return "\n".join(lines)


def write(adoption: Adoption, out: Path) -> str:
    """Write ``<out>/config.toml`` and ``<out>/layers/<name>/layer.toml``; never overwrite.

    Every target is checked before anything is written, so a refusal leaves
    nothing half done. Returns the summary and the files written.
    """
    out = out.resolve()
    files: dict[Path, str] = {out / "config.toml": render_config(adoption)}
    for layer in adoption.layers:
        folder = out / "layers" / layer.name
        files[folder / "layer.toml"] = render_layer(adoption, layer, folder)
    for path in files:
        if path.exists() or path.is_symlink():
            raise InputError(display(path), "already exists; init never overwrites a file "
                             "(move it away, or write to another folder)")
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("x", encoding="utf-8") as handle:  # "x": refuse a file raced in
            handle.write(text)
    written = "\n".join(f"  {path.relative_to(out).as_posix()}" for path in files)
    return f"{summary(adoption)}\nwrote under {out}:\n{written}"


def render_config(adoption: Adoption) -> str:
    lines = [
        f"# Written by `orchestrator init` from the Dockerfiles under {adoption.root}"
        + (f",\n# named by {adoption.library}." if adoption.library else "."),
        "# They are built as they are; review the hierarchy below and in layers/.",
        "",
        "[catalog]",
        'layers = "layers"',
        "",
        "# Where built images go: <url>/<image>:<tag>.",
    ]
    if adoption.registry_hint:
        lines.append(f"# The Dockerfiles name this tree's images under {adoption.registry_hint}.")
    lines += ["# [registry]",
              f"# url = {_toml(adoption.registry_hint or 'registry.example:5000/base')}"]
    for up in adoption.upstreams:
        lines += ["", f"[upstream.{up.name}]", f"image = {_toml(up.image)}",
                  f"tag = {_toml(up.tag)}"]
        if up.track:
            lines.append(f"# track = {_toml(up.track)}   # instead of tag: follow newer tags")
        lines.append(f"names = [{', '.join(_toml(n) for n in up.names)}]")
    return "\n".join(lines) + "\n"


def render_layer(adoption: Adoption, layer: AdoptedLayer, folder: Path) -> str:
    """``layer.toml`` for ``layer`` written in ``folder`` (paths relative to it)."""
    source = adoption.root.resolve()
    dockerfile = _relative(source / layer.dockerfile, folder)
    context = _relative(source / layer.context, folder)
    lines = [f"# Adopted by `orchestrator init`: builds {layer.dockerfile} as it is "
             "(the file is never changed)."]
    how = f"FROM {layer.parent_ref} (line {layer.parent_line})" if layer.parent_ref else ""
    if layer.parent is not None:
        lines += [f"# {how} is layer {layer.parent!r}.", f"from = {_toml(layer.parent)}"]
    elif layer.upstream is not None:
        lines += [f"# {how} is upstream {layer.upstream!r} in config.toml.",
                  f"from = {_toml(UPSTREAM_PREFIX + layer.upstream)}"]
    elif layer.parent_ref == "scratch":
        lines += ["# No parent: the final stage builds FROM scratch. Every layer needs one:",
                  "# build this image elsewhere, declare it as an [upstream] and let the",
                  "# layers above name it (or remove this folder)."]
    elif layer.parent_ref and "@" in layer.parent_ref:
        lines += [f"# No parent: {how} is pinned by digest in the Dockerfile. Every layer",
                  "# needs one it can watch: declare that image as an [upstream] with a tag",
                  '# and set from = "upstream:NAME" (or remove this folder).']
    else:
        lines.append('# from = "…"   # could not tell the parent; see the notes below')
    for candidate in layer.from_candidates:
        lines.append(f"# from = {_toml(candidate)}   # if FROM {layer.parent_ref} means that "
                     "layer of the tree")
    lines.append(f"image = {_toml(layer.image)}")
    tags = [t for t in layer.tags if t != DEFAULT_TAG]
    if tags:
        lines.append(f"tags = [{', '.join(_toml(t) for t in tags)}]")
    else:
        lines.append('# tags = ["…"]   # no version found (children use none, or only "latest", '
                     "which moves and so is refused)")
    lines += [f"dockerfile = {_toml(dockerfile)}", f"context = {_toml(context)}"]
    if layer.platforms:
        # Written as a suggestion: every platform but the host's builds under emulation.
        lines.append(f"# platforms = [{', '.join(_toml(p) for p in layer.platforms)}]   "
                     f"# its Architectures in {adoption.library}")
    if layer.needs or layer.upstream_needs:
        used = [f"layer {n!r}" for n in layer.needs] + [
            f"upstream {n!r}" for n in layer.upstream_needs]
        lines.append(f"# Also uses (build stages, COPY --from, RUN --mount): {', '.join(used)}.")
    if layer.runs_as_root:
        lines.append("# allow_root = true   # no USER sets a non-root user in this image or "
                     "the layers below it; `orchestrator lint` refuses root images unless "
                     "allowed")
    lines += [f"# note: {note}" for note in layer.notes]
    return "\n".join(lines) + "\n"


def _relative(target: Path, folder: Path) -> str:
    return PurePosixPath(Path(os.path.relpath(target, folder)).as_posix()).as_posix()


def _toml(value: str) -> str:
    """A TOML basic string (JSON's escapes are valid TOML; DEL must be escaped too)."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007F")
