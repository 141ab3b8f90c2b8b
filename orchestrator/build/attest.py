"""Provenance and SBOM for every pushed image, attached in the registry.

After an image is pushed: an in-toto SLSA v1 provenance statement (what went
in, why it was built, on which engine) and a CycloneDX SBOM read from the
image's own filesystem (its layers, fetched from the registry, whiteouts
applied; only the package databases and pyenv interpreters are read). Both go
to the registry as OCI artifacts whose ``subject`` is the image, so they work
the same for every engine and can be read on any host (``orchestrator
explain``). With ``[provenance] key`` the statement is a DSSE envelope signed
with that key (ed25519 or ECDSA P-256); without one it is stored bare, and its
annotation says unsigned. The SBOM is made first and the statement names it by
digest, so whoever reads them back (``registry/explain.py``) can tell our SBOM
from one someone else attached; annotations are for people, never trusted.

The SBOM comes from the image's package record (``core.packages``): which
packages each layer installed. With a ``PackageStore`` the read is incremental:
the nearest ancestor in ``lineage`` that has a record stands in for its layers,
and only the layers above it are fetched and read; the records made on the way
are kept for the next child.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import shutil
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING

from orchestrator import __version__
from orchestrator.core import provenance
from orchestrator.core.errors import OrchestratorError
from orchestrator.core.imageref import ImageRef, parse_repository
from orchestrator.registry.artifacts import Artifact, attach
from orchestrator.registry.client import Manifest, RegistryClient

if TYPE_CHECKING:  # the one-shot plan never attests: it need not load these
    from orchestrator.build.packagestore import PackageStore
    from orchestrator.core.packages import PackageRecord
    from orchestrator.registry.layerpackages import Boundary

SIGNED = "dev.orchestrator.signed"
log = logging.getLogger("orchestrator.attest")
PREDICATE_ANNOTATION = "in-toto.io/predicate-type"


@dataclass(frozen=True)
class AttestSettings:
    enabled: bool = True
    sbom: bool = True
    key_pem: bytes | None = None  # a private key: sign the statements


@dataclass(frozen=True)
class Ancestor:
    """An image below the one attested: who it is (the layer id or ``upstream:NAME``
    its packages are attributed to) and where (repository and manifest digest)."""

    owner: str
    repository: str
    digest: str


class Attestor:
    def __init__(self, client: RegistryClient, settings: AttestSettings,
                 packages: PackageStore | None = None) -> None:
        self.client = client
        self.settings = settings
        self.packages = packages  # records kept between builds: incremental reads
        self._key = None
        if settings.key_pem is not None:
            from orchestrator.core.dsse import load_signing_key

            self._key = load_signing_key(settings.key_pem)  # a bad key fails at start

    async def attest(self, repo: ImageRef, digest: str, facts: provenance.BuildFacts,
                     tag: str | None, work: Path,
                     lineage: Sequence[Ancestor] | None = None) -> list[str]:
        """Attach provenance (and an SBOM) to the image ``repo@digest``; returns the
        artifact digests. ``lineage``: the images below, oldest first (the parent
        last); by default the parent alone, as ``facts`` names it."""
        subject = await self.client.get_manifest(repo, digest)
        if subject is None:
            raise LookupError(f"{repo.name}@{digest} is not in the registry")
        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        sbom = None
        if self.settings.sbom:
            if lineage is None:
                lineage = [Ancestor("parent", facts.parent.repository, facts.parent.digest)] \
                    if facts.parent is not None else []
            sbom = await self._sbom(repo, subject, tag, work, created, facts.layer, lineage)
            # The statement names the SBOM by digest: its signature vouches for that
            # document, so an SBOM someone else attaches to the image never reads as ours.
            facts = replace(facts, sbom_digest="sha256:" + hashlib.sha256(sbom.data).hexdigest())
        artifacts = [self._provenance(facts, created), *([sbom] if sbom else [])]
        return await attach(self.client, repo, subject, artifacts)

    def _provenance(self, facts: provenance.BuildFacts, created: str) -> Artifact:
        payload = provenance.encode_statement(provenance.build_statement(facts))
        annotations = {PREDICATE_ANNOTATION: provenance.PREDICATE_TYPE,
                       "org.opencontainers.image.created": created}
        if self._key is None:
            return Artifact(provenance.STATEMENT_MEDIA_TYPE, provenance.STATEMENT_MEDIA_TYPE,
                            payload, {**annotations, SIGNED: "false"})
        from orchestrator.core.dsse import ENVELOPE_MEDIA_TYPE, encode_envelope, sign

        envelope = encode_envelope(sign(payload, self._key))
        return Artifact(provenance.STATEMENT_MEDIA_TYPE, ENVELOPE_MEDIA_TYPE, envelope,
                        {**annotations, SIGNED: "true"})

    async def _sbom(self, repo: ImageRef, subject: Manifest, tag: str | None, work: Path,
                    created: str, owner: str, lineage: Sequence[Ancestor]) -> Artifact:
        from orchestrator.core.sbom import SBOM_MEDIA_TYPE, sbom_document

        record = await self.record(repo, subject, owner, lineage, work)

        def write() -> bytes:
            return sbom_document(record.sbom_packages(), record.release(),
                                 image_name=repo.name, image_digest=subject.digest,
                                 image_tag=tag, tool_version=__version__,
                                 timestamp=datetime.now(UTC))

        data = await asyncio.to_thread(write)
        return Artifact(SBOM_MEDIA_TYPE, SBOM_MEDIA_TYPE, data,
                        {"org.opencontainers.image.created": created})

    async def record(self, repo: ImageRef, subject: Manifest, owner: str,
                     lineage: Sequence[Ancestor], work: Path) -> PackageRecord:
        """The image's package record: kept, or read from its layers above the nearest
        ancestor that has one (every record made on the way is kept)."""
        from orchestrator.registry.layerpackages import read_records

        layers = _layer_digests(subject)
        kept = await self._kept(subject.digest)
        if kept is not None and kept.layers == tuple(layers) and kept.owner == owner:
            return kept  # the same image attested again (a reproducible rebuild)
        start, boundaries = await self._start(lineage, layers)
        offset = len(start.layers) if start is not None else 0
        folder = work / "sbom-layers"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            paths = []
            for index, layer in enumerate(layers[offset:], offset):
                path = folder / f"{index:03d}"
                await self.client.download_blob(repo, layer, path)
                paths.append(path)

            def read() -> list[PackageRecord]:
                with _opened(paths) as blobs:
                    return read_records(blobs, layers=layers, digest=subject.digest,
                                        owner=owner, start=start, boundaries=boundaries)

            records = await asyncio.to_thread(read)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if self.packages is not None:
            try:
                await asyncio.to_thread(self.packages.save, records)
            except sqlite3.Error as exc:  # a cache: the next child reads more, that is all
                log.warning("packages: records of %s not kept: %s", subject.digest, exc)
        return records[-1]

    async def _kept(self, digest: str) -> PackageRecord | None:
        if self.packages is None:
            return None
        try:
            return await asyncio.to_thread(self.packages.record, digest)
        except sqlite3.Error as exc:
            log.warning("packages: the record of %s cannot be read: %s", digest, exc)
            return None

    async def _start(self, lineage: Sequence[Ancestor], layers: list[str]
                     ) -> tuple[PackageRecord | None, list[Boundary]]:
        """The youngest ancestor with a record whose layers begin ours, and where each
        younger ancestor's layers end (from its manifest; one that cannot be read is
        left out, its packages then count as the next one's)."""
        from orchestrator.registry.layerpackages import Boundary

        boundaries: list[Boundary] = []
        for ancestor in reversed(lineage):
            found = await self._kept(ancestor.digest)
            if found is not None and list(found.layers) == layers[:len(found.layers)]:
                return found, boundaries
            count = await self._layer_count(ancestor, layers)
            if count is not None:
                boundaries.insert(0, Boundary(ancestor.owner, ancestor.digest, count))
        return None, boundaries

    async def _layer_count(self, ancestor: Ancestor, layers: list[str]) -> int | None:
        try:
            repo = parse_repository(ancestor.repository)
            manifest = await self.client.get_manifest(repo, ancestor.digest)
            candidates: list[Manifest | None] = [manifest]
            # An index (a multi-platform upstream): the platform whose layers are ours.
            for entry in (manifest.json().get("manifests") or []) if manifest else []:
                if isinstance(entry, dict) and isinstance(entry.get("digest"), str):
                    candidates.append(await self.client.get_manifest(repo, entry["digest"]))
        except (OrchestratorError, ValueError):
            return None
        for candidate in candidates:
            if candidate is None:
                continue
            theirs = _layer_digests(candidate)
            if theirs and theirs == layers[:len(theirs)]:
                return len(theirs)
        return None


def _layer_digests(manifest: Manifest) -> list[str]:
    return [str(layer["digest"]) for layer in manifest.json().get("layers") or []]


@contextlib.contextmanager
def _opened(paths: list[Path]) -> Iterator[Iterator[IO[bytes]]]:
    handles: list[IO[bytes]] = []

    def each() -> Iterator[IO[bytes]]:
        for path in paths:
            handle = path.open("rb")
            handles.append(handle)
            yield handle

    try:
        yield each()
    finally:
        for handle in handles:
            handle.close()
