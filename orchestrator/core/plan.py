"""Deciding whether a layer builds, and saying why. Pure.

The caller walks the graph parents-first, computes each layer's inputs once its
parent's digest is known, looks the build key up, and asks :func:`decide`.
"""

from __future__ import annotations

from orchestrator.core.buildkey import first_changed_path
from orchestrator.core.model import Decision, Inputs, Reason


def short_digest(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    return f"{algo}:{hexpart[:12]}" if hexpart else digest[:12]


def is_due(built_at: float | None, every_s: float | None, now: float) -> bool:
    """A periodic rebuild is due when the last build is older than ``every``."""
    return every_s is not None and built_at is not None and now - built_at >= every_s


def decide(
    layer: str,
    current: Inputs | None,
    previous: Inputs | None,
    *,
    image_found: bool,
    forced: bool = False,
    due: bool = False,
    parent_is_upstream: bool = False,
) -> Decision:
    """``current`` is None when the parent itself will build: the key is not
    known until the parent's new digest is."""
    if forced:
        return Decision(layer, True, Reason.FORCED)
    if current is None:
        return Decision(layer, True, Reason.PARENT_REBUILT)
    if image_found:
        if due:
            return Decision(layer, True, Reason.SCHEDULED)
        return Decision(layer, False)
    if previous is None:
        return Decision(layer, True, Reason.NEVER_BUILT)
    return _why_changed(layer, current, previous, parent_is_upstream)


def _why_changed(
    layer: str, current: Inputs, previous: Inputs, parent_is_upstream: bool
) -> Decision:
    if current.dockerfile != previous.dockerfile:
        return Decision(layer, True, Reason.CONTEXT_CHANGED, "Dockerfile")
    path = first_changed_path(previous.files, current.files)
    if path is not None:
        return Decision(layer, True, Reason.CONTEXT_CHANGED, path)
    old_args, new_args = dict(previous.args), dict(current.args)
    for name in sorted(old_args.keys() | new_args.keys()):
        if old_args.get(name) != new_args.get(name):
            return Decision(layer, True, Reason.ARGS_CHANGED, name)
    if set(current.platforms) != set(previous.platforms):
        added = sorted(set(current.platforms) - set(previous.platforms))
        removed = sorted(set(previous.platforms) - set(current.platforms))
        detail = ", ".join([*(f"+{p}" for p in added), *(f"-{p}" for p in removed)])
        return Decision(layer, True, Reason.PLATFORMS_CHANGED, detail)
    if set(current.secrets) != set(previous.secrets):
        return Decision(layer, True, Reason.SECRETS_CHANGED,
                        ", ".join(sorted(set(current.secrets) ^ set(previous.secrets))))
    old_bases, new_bases = dict(previous.bases), dict(current.bases)
    for ref in sorted(old_bases.keys() | new_bases.keys()):
        if old_bases.get(ref) != new_bases.get(ref):
            change = f"{ref}: {short_digest(old_bases.get(ref) or 'none')} -> " \
                     f"{short_digest(new_bases.get(ref) or 'none')}"
            return Decision(layer, True, Reason.UPSTREAM_CHANGED, change)
    if current.parent_digest != previous.parent_digest:
        change = f"{short_digest(previous.parent_digest)} -> {short_digest(current.parent_digest)}"
        reason = Reason.UPSTREAM_CHANGED if parent_is_upstream else Reason.PARENT_REBUILT
        return Decision(layer, True, reason, change)
    if current.packages != previous.packages:
        # The fixed versions the layer is rebuilt against (the caller names the fix).
        taken = sorted(set(current.packages) - set(previous.packages))
        return Decision(layer, True, Reason.PACKAGE_FIX,
                        ", ".join(f"{_package_name(name)} {version}" for name, version in taken))
    # Same inputs as the last build, but no image carries the key any more
    # (registry garbage-collected, local store pruned).
    return Decision(layer, True, Reason.IMAGE_MISSING)


def _package_name(pin: str) -> str:
    """``deb:libssl3:amd64`` -> ``libssl3``; ``retry:deb:libssl3:amd64`` -> ``libssl3
    (again)``."""
    again = pin.startswith("retry:")
    parts = pin.removeprefix("retry:").split(":")
    name = parts[1] if len(parts) >= 2 else pin
    return f"{name} (again)" if again else name
