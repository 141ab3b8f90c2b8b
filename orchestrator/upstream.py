"""Resolving upstream inputs: a registry tag to its digest, a git remote to its newest tag."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

from orchestrator.errors import RegistryError, UpstreamError
from orchestrator.imageref import parse_repository
from orchestrator.model import ResolvedUpstream, UpstreamSpec
from orchestrator.registry import RegistryClient
from orchestrator.versions import newest


async def resolve(spec: UpstreamSpec, client: RegistryClient) -> ResolvedUpstream:
    if spec.kind == "git":
        return await _resolve_git(spec)
    assert spec.image is not None
    ref = parse_repository(spec.image)
    if not spec.tls_verify:
        client.allow_insecure(ref.registry)
    try:
        tag = spec.tag
        if tag is None:
            assert spec.track is not None
            tags = await client.tags(ref)
            tag = newest(tags, spec.track)
            if tag is None:
                raise UpstreamError(spec.name, f"no tag of {spec.image} matches {spec.track!r} "
                                    f"({len(tags)} tags seen)")
        digest = await client.manifest_digest(ref, tag)
    except RegistryError as exc:
        raise UpstreamError(spec.name, str(exc)) from exc
    if digest is None:
        raise UpstreamError(spec.name, f"{spec.image}:{tag} not found")
    return ResolvedUpstream(spec.name, ref.at(digest), digest, tag)


async def _resolve_git(spec: UpstreamSpec) -> ResolvedUpstream:
    assert spec.git is not None and spec.track is not None
    # No terminal prompts: a remote that wants credentials must fail, not hang.
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    proc = await asyncio.create_subprocess_exec(
        "git", "ls-remote", "--tags", "--refs", spec.git,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise UpstreamError(spec.name, f"git ls-remote {spec.git} timed out") from None
    if proc.returncode != 0:
        raise UpstreamError(spec.name, f"git ls-remote {spec.git}: "
                            f"{err.decode(errors='replace').strip()}")
    commits = parse_ls_remote(out.decode(errors="replace"))
    tag = newest(commits, spec.track)
    if tag is None:
        raise UpstreamError(spec.name, f"no tag of {spec.git} matches {spec.track!r}")
    return ResolvedUpstream(spec.name, spec.git, commits[tag], tag)


def parse_ls_remote(text: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for line in text.splitlines():
        sha, _, ref = line.partition("\t")
        if ref.startswith("refs/tags/"):
            tags[ref.removeprefix("refs/tags/")] = sha.strip()
    return tags


async def resolve_all(
    specs: Mapping[str, UpstreamSpec], names: set[str], client: RegistryClient
) -> tuple[dict[str, ResolvedUpstream], dict[str, UpstreamError]]:
    """Resolve the named upstreams concurrently, once per run. An upstream that
    cannot be resolved fails only the layers that stand on it."""
    chosen = sorted(names)
    results = await asyncio.gather(*(resolve(specs[n], client) for n in chosen),
                                   return_exceptions=True)
    resolved: dict[str, ResolvedUpstream] = {}
    failed: dict[str, UpstreamError] = {}
    for name, result in zip(chosen, results, strict=True):
        if isinstance(result, UpstreamError):
            failed[name] = result
        elif isinstance(result, BaseException):
            raise result
        else:
            resolved[name] = result
    return resolved, failed
