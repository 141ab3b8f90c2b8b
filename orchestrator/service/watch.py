"""Watching the layer folders: which layers a burst of saves touched."""

from __future__ import annotations

import asyncio
import fnmatch
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import watchfiles

from orchestrator.catalog.context import load_ignore
from orchestrator.catalog.layers import LAYER_FILE
from orchestrator.core.dockerignore import DockerIgnore
from orchestrator.core.errors import InputError

# Files editors write next to the real one while saving. Narrow on purpose: a
# pattern that also matches a real file name (``config.tmp.json``) would hide an
# edit that changes the image.
EDITOR_TEMP = ("*~", ".*.swp", ".*.swx", ".*.swo", ".*.swn", ".#*", "#*#", "4913",
               ".DS_Store", "*.kate-swp", ".goutputstream-*", "*___jb_tmp___",
               "*___jb_old___", ".*.sw?x")
IGNORE_FILES = (".dockerignore", ".containerignore")
VCS = (".git", ".hg", ".svn", "__pycache__")


@dataclass(frozen=True)
class FolderRules:
    """How to read changes in one layer folder."""

    ignore: DockerIgnore
    # Always relevant, whatever the ignore file says: the Dockerfile, layer.toml
    # and ignore files are build metadata even when the context leaves them out.
    metadata: frozenset[str] = field(default_factory=frozenset)


def default_rules(folder: Path) -> FolderRules:
    metadata = frozenset({LAYER_FILE, "Dockerfile", *IGNORE_FILES})
    try:
        return FolderRules(load_ignore(folder, ".dockerignore"), metadata)
    except InputError:  # a broken ignore file: every change counts until it is fixed
        return FolderRules(DockerIgnore([]), metadata)


@dataclass(frozen=True)
class LayerChange:
    folders: dict[str, str]  # layer folder name -> first changed path (relative to layers/)
    catalog_changed: bool  # a layer.toml or a layer folder appeared, changed or went away
    catalog_folders: frozenset[str] = frozenset()  # folders whose layer.toml changed


class LayerFilter:
    """Drops editor temp files, VCS folders and what a layer's ignore file leaves
    out of its context; those never change an image. ``rules_of`` gives a
    folder's rules from the current catalog (the engine's ignore file, the
    layer's Dockerfile name)."""

    def __init__(self, layers_dir: Path,
                 rules_of: Callable[[str], FolderRules] | None = None,
                 contexts: Mapping[Path, tuple[str, DockerIgnore]] | None = None) -> None:
        """``contexts``: build contexts outside the layers folder (``context =
        "PATH"``), each with the layer folder it belongs to and its ignore rules."""
        self.layers_dir = layers_dir.resolve()
        self._rules_of = rules_of or (lambda folder: default_rules(self.layers_dir / folder))
        self._rules: dict[str, FolderRules] = {}
        self.contexts = {root.resolve(): value for root, value in (contexts or {}).items()}

    def rules(self, folder: str) -> FolderRules:
        if folder not in self._rules:
            self._rules[folder] = self._rules_of(folder)
        return self._rules[folder]

    def forget(self, folders: Iterable[str] | None = None) -> None:
        """Re-read rules (after an ignore file or the catalog changed)."""
        if folders is None:
            self._rules.clear()
        for folder in folders or ():
            self._rules.pop(folder, None)

    def relevant(self, path: str) -> tuple[str, str] | None:
        """(layer folder, path inside it) when ``path`` matters, else None."""
        for root, (folder, ignore) in self.contexts.items():
            try:
                inner = Path(path).resolve().relative_to(root).as_posix()
            except (ValueError, OSError):
                continue
            name = inner.rsplit("/", 1)[-1]
            if any(p in VCS for p in inner.split("/")) or \
                    any(fnmatch.fnmatchcase(name, pattern) for pattern in EDITOR_TEMP):
                return None
            if name not in IGNORE_FILES and ignore.excluded(inner):
                return None
            return folder, f"(context) {inner}"
        try:
            rel = Path(path).resolve().relative_to(self.layers_dir)
        except (ValueError, OSError):
            return None
        parts = rel.parts
        if not parts or any(p in VCS for p in parts):
            return None
        folder, inner = parts[0], "/".join(parts[1:])
        if folder.startswith("."):
            return None
        if not inner:
            return folder, inner
        name = parts[-1]
        if name in IGNORE_FILES or name.endswith(IGNORE_FILES):
            self.forget([folder])
            return folder, inner
        rules = self.rules(folder)
        if inner in rules.metadata:
            return folder, inner
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in EDITOR_TEMP):
            return None
        if rules.ignore.excluded(inner):
            return None
        return folder, inner

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        return self.relevant(path) is not None


async def watch_layers(
    layers_dir: Path,
    on_change: Callable[[LayerChange], Awaitable[None]],
    stop: asyncio.Event,
    debounce_s: float,
    path_filter: LayerFilter | None = None,
) -> None:
    """Call ``on_change`` once per burst of saves: after ``debounce_s`` with no
    further change (watchfiles' own debounce caps a batch's length instead, so
    a long burst would otherwise come out as several builds)."""
    path_filter = path_filter or LayerFilter(layers_dir)
    pending: dict[str, str] = {}
    catalog_folders: set[str] = set()
    catalog_changed = False
    timer: asyncio.Task[None] | None = None

    async def fire_after_quiet() -> None:
        nonlocal pending, catalog_changed, catalog_folders
        await asyncio.sleep(debounce_s)
        change = LayerChange(pending, catalog_changed, frozenset(catalog_folders))
        pending, catalog_changed, catalog_folders = {}, False, set()
        await on_change(change)

    roots = [layers_dir, *(root for root in path_filter.contexts
                           if not root.is_relative_to(path_filter.layers_dir))]
    try:
        async for changes in watchfiles.awatch(
            *roots, watch_filter=path_filter, debounce=50, step=20, stop_event=stop,
            rust_timeout=1000, yield_on_timeout=False,
        ):
            for _, path in sorted(changes, key=lambda c: c[1]):
                hit = path_filter.relevant(path)
                if hit is None:
                    continue
                folder, inner = hit
                pending.setdefault(folder, f"{folder}/{inner}" if inner else folder)
                if inner in ("", LAYER_FILE):
                    catalog_changed = True
                    catalog_folders.add(folder)
            if pending:
                if timer is not None and not timer.done():
                    timer.cancel()
                timer = asyncio.create_task(fire_after_quiet())
    finally:
        if timer is not None and not timer.done():
            timer.cancel()
