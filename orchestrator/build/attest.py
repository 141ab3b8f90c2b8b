"""Provenance and SBOM for every pushed image, attached in the registry.

After an image is pushed: an in-toto SLSA v1 provenance statement (what went
in, why it was built, on which engine) and a CycloneDX SBOM read from the
image's own filesystem (its layers, fetched from the registry, whiteouts
applied; only the package databases and pyenv interpreters are read). Both go
to the registry as OCI artifacts whose ``subject`` is the image, so they work
the same for every engine and can be read on any host (``orchestrator
explain``). With ``[provenance] key`` the statement is a DSSE envelope signed
with that key (ed25519 or ECDSA P-256); without one it is stored bare, and its
annotation says unsigned.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from orchestrator import __version__
from orchestrator.core import provenance
from orchestrator.core.imageref import ImageRef
from orchestrator.registry.artifacts import Artifact, attach
from orchestrator.registry.client import Manifest, RegistryClient

SIGNED = "dev.orchestrator.signed"
PREDICATE_ANNOTATION = "in-toto.io/predicate-type"


@dataclass(frozen=True)
class AttestSettings:
    enabled: bool = True
    sbom: bool = True
    key_pem: bytes | None = None  # a private key: sign the statements


class Attestor:
    def __init__(self, client: RegistryClient, settings: AttestSettings) -> None:
        self.client = client
        self.settings = settings
        self._key = None
        if settings.key_pem is not None:
            from orchestrator.core.dsse import load_signing_key

            self._key = load_signing_key(settings.key_pem)  # a bad key fails at start

    async def attest(self, repo: ImageRef, digest: str, facts: provenance.BuildFacts,
                     tag: str | None, work: Path) -> list[str]:
        """Attach provenance (and an SBOM) to the image ``repo@digest``; returns the
        artifact digests."""
        subject = await self.client.get_manifest(repo, digest)
        if subject is None:
            raise LookupError(f"{repo.name}@{digest} is not in the registry")
        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        artifacts = [self._provenance(facts, created)]
        if self.settings.sbom:
            artifacts.append(await self._sbom(repo, subject, tag, work, created))
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
                    created: str) -> Artifact:
        from orchestrator.core.sbom import (
            SBOM_MEDIA_TYPE,
            SBOM_PATTERNS,
            SBOM_PRESENCE_PATTERNS,
            build_sbom,
        )
        from orchestrator.registry.imagefs import contents, select_files

        layers = [layer["digest"] for layer in subject.json().get("layers") or []]
        folder = work / "sbom-layers"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            paths = []
            for index, layer in enumerate(layers):
                path = folder / f"{index:03d}"
                await self.client.download_blob(repo, layer, path)
                paths.append(path)

            def read() -> bytes:
                with _opened(paths) as blobs:
                    files = select_files(blobs, SBOM_PATTERNS, presence=SBOM_PRESENCE_PATTERNS)
                return build_sbom(contents(files), image_name=repo.name,
                                  image_digest=subject.digest, image_tag=tag,
                                  tool_version=__version__,
                                  timestamp=datetime.now(UTC))

            data = await asyncio.to_thread(read)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return Artifact(SBOM_MEDIA_TYPE, SBOM_MEDIA_TYPE, data,
                        {"org.opencontainers.image.created": created})


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
