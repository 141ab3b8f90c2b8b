"""Watching the layer folders: which layers a burst of saves touched."""

from __future__ import annotations

import asyncio
import fnmatch
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import watchfiles

from orchestrator.catalog.context import load_dockerignore
from orchestrator.catalog.layers import LAYER_FILE
from orchestrator.core.dockerignore import DockerIgnore

# Files editors write next to the real one while saving.
EDITOR_TEMP = ("*~", "*.swp", "*.swx", "*.swo", ".#*", "#*#", "4913", "*.tmp.*", ".DS_Store",
               "*.kate-swp", ".goutputstream-*")


@dataclass(frozen=True)
class LayerChange:
    folders: dict[str, str]  # layer folder name -> first changed path (relative to layers/)
    catalog_changed: bool  # a layer.toml or a layer folder appeared, changed or went away


class LayerFilter:
    """Drops editor temp files, VCS folders and what a layer's .dockerignore
    leaves out of its context; those never change an image."""

    def __init__(self, layers_dir: Path) -> None:
        self.layers_dir = layers_dir.resolve()
        self._ignores: dict[str, DockerIgnore] = {}

    def _ignore(self, folder: str) -> DockerIgnore:
        if folder not in self._ignores:
            self._ignores[folder] = load_dockerignore(self.layers_dir / folder)
        return self._ignores[folder]

    def relevant(self, path: str) -> tuple[str, str] | None:
        """(layer folder, path inside it) when ``path`` matters, else None."""
        try:
            rel = Path(path).resolve().relative_to(self.layers_dir)
        except (ValueError, OSError):
            return None
        parts = rel.parts
        if not parts or any(p in (".git", ".hg", ".svn", "__pycache__") for p in parts):
            return None
        if any(fnmatch.fnmatch(parts[-1], pattern) for pattern in EDITOR_TEMP):
            return None
        folder, inner = parts[0], "/".join(parts[1:])
        if folder.startswith("."):
            return None
        if inner == ".dockerignore":
            self._ignores.pop(folder, None)
        elif inner and self._ignore(folder).excluded(inner):
            return None
        return folder, inner

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        return self.relevant(path) is not None


async def watch_layers(
    layers_dir: Path,
    on_change: Callable[[LayerChange], Awaitable[None]],
    stop: asyncio.Event,
    debounce_s: float,
) -> None:
    """Call ``on_change`` once per burst of saves: after ``debounce_s`` with no
    further change (watchfiles' own debounce caps a batch's length instead, so
    a long burst would otherwise come out as several builds)."""
    path_filter = LayerFilter(layers_dir)
    pending: dict[str, str] = {}
    catalog_changed = False
    timer: asyncio.Task[None] | None = None

    async def fire_after_quiet() -> None:
        nonlocal pending, catalog_changed
        await asyncio.sleep(debounce_s)
        change = LayerChange(pending, catalog_changed)
        pending, catalog_changed = {}, False
        await on_change(change)

    try:
        async for changes in watchfiles.awatch(
            layers_dir, watch_filter=path_filter, debounce=50, step=20, stop_event=stop,
            rust_timeout=1000, yield_on_timeout=False,
        ):
            for _, path in sorted(changes, key=lambda c: c[1]):
                hit = path_filter.relevant(path)
                if hit is None:
                    continue
                folder, inner = hit
                pending.setdefault(folder, f"{folder}/{inner}" if inner else folder)
                catalog_changed = catalog_changed or inner in ("", LAYER_FILE)
            if pending:
                if timer is not None and not timer.done():
                    timer.cancel()
                timer = asyncio.create_task(fire_after_quiet())
    finally:
        if timer is not None and not timer.done():
            timer.cancel()
