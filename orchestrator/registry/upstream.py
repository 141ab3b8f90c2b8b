"""Resolving upstream inputs: a registry tag to its digest, a git remote to its newest tag."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping

from orchestrator.core.errors import RegistryError, UpstreamError
from orchestrator.core.imageref import parse_repository
from orchestrator.core.model import ResolvedUpstream, UpstreamSpec
from orchestrator.core.versions import newest
from orchestrator.registry.client import RegistryClient


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
        raise UpstreamError(spec.name, str(exc), exc.retry_after_s) from exc
    if digest is None:
        raise UpstreamError(spec.name, f"{spec.image}:{tag} not found")
    return ResolvedUpstream(spec.name, ref.at(digest), digest, tag)


async def _resolve_git(spec: UpstreamSpec) -> ResolvedUpstream:
    assert spec.git is not None and spec.track is not None
    # No terminal prompts: a remote that wants credentials must fail, not hang.
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    try:
        proc = await asyncio.create_subprocess_exec(
            "git", "ls-remote", "--tags", "--refs", spec.git,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )
    except OSError as exc:
        raise UpstreamError(spec.name, f"cannot run git ({exc.strerror}): install git to "
                            "follow a git upstream") from exc
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


class Backoff:
    """Exponential backoff with a cap, for polls that fail (429, 5xx, network)."""

    def __init__(self, base_s: float = 5.0, cap_s: float = 1800.0) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.failures = 0

    def success(self) -> None:
        self.failures = 0

    def failure(self, retry_after_s: float | None = None) -> float:
        self.failures += 1
        delay: float = min(self.cap_s, self.base_s * 2.0 ** (self.failures - 1))
        if retry_after_s is not None:  # the registry said when: never ask earlier
            delay = max(delay, min(retry_after_s, self.cap_s))
        return delay


def jittered(interval_s: float, rng: random.Random, spread: float = 0.1) -> float:
    """Spread polls of many daemons (and upstreams) so they do not arrive in step."""
    return interval_s * (1 + rng.uniform(-spread, spread))


Resolver = Callable[[UpstreamSpec], Awaitable[ResolvedUpstream]]


class UpstreamPoller:
    """Polls one upstream forever; reports each resolved value and each failure."""

    def __init__(
        self,
        spec: UpstreamSpec,
        resolver: Resolver,
        on_value: Callable[[ResolvedUpstream], Awaitable[None]],
        on_error: Callable[[UpstreamError, float], None],
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.spec = spec
        self.resolver = resolver
        self.on_value = on_value
        self.on_error = on_error
        self.rng = rng or random.Random()
        # Failures back off up to the poll interval itself, never beyond it.
        self.backoff = Backoff(base_s=min(5.0, spec.poll_s), cap_s=spec.poll_s)
        self.last_check: float | None = None
        self.next_check: float | None = None
        self.last_error: str | None = None
        self.next_delay_s = spec.poll_s  # after the last check: backoff or the poll interval

    async def check(self) -> float:
        """One poll; returns the delay before the next."""
        self.last_check = time.time()
        try:
            value = await self.resolver(self.spec)
        except Exception as exc:
            # Whatever goes wrong (a hanging token server, a missing binary), the
            # poller lives on and tries again later: it must never die for good.
            if not isinstance(exc, UpstreamError):
                exc = UpstreamError(self.spec.name, f"{type(exc).__name__}: {exc}")
            return self._failed(exc)
        try:
            await self.on_value(value)
        except Exception as exc:  # recording it failed (a full disk): try again later
            return self._failed(UpstreamError(self.spec.name, f"cannot record {value.tag}: "
                                              f"{exc}"))
        self.backoff.success()
        self.last_error = None
        self.next_delay_s = jittered(self.spec.poll_s, self.rng)
        return self.next_delay_s

    def _failed(self, error: UpstreamError) -> float:
        delay = self.backoff.failure(error.retry_after_s)
        self.last_error = str(error)
        self.next_delay_s = delay
        self.on_error(error, delay)
        return delay

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop``; the first poll waits out the delay the last check chose."""
        delay = self.next_delay_s
        while not stop.is_set():
            self.next_check = time.time() + delay
            try:
                await asyncio.wait_for(stop.wait(), delay)
                return
            except TimeoutError:
                pass
            delay = await self.check()
