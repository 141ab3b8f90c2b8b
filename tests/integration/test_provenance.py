"""Every pushed image gets a provenance statement and an SBOM in the registry;
explain reads the chain back (and verifies signatures); tampering is caught;
attaching never changes the image's digest. Someone with push rights attaches
papers of their own the way any tool would, with the orchestrator's own
artifact code: another image's signed statement and SBOM (a replay), another
platform's statement, a conflicting one and an unsigned one naming a false
parent; none of them is believed."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator.core import dsse, provenance
from orchestrator.core.imageref import ImageRef, parse_repository
from orchestrator.core.platforms import from_machine
from orchestrator.registry.artifacts import Artifact, attach, referrers_tag
from orchestrator.registry.client import RegistryClient
from tests.conftest import (
    Project,
    Testbed,
    _testbed_settings,
    image_config,
    manifest_digest,
    unique_namespace,
)
from tests.integration.hierarchy import write_config

pytestmark = pytest.mark.integration
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def registry_get(registry: str, path: str, accept: str = MANIFEST) -> bytes:
    request = urllib.request.Request(f"http://{registry}/v2/{path}", headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return bytes(resp.read())


def registry_put(registry: str, path: str, body: bytes, content_type: str) -> None:
    request = urllib.request.Request(f"http://{registry}/v2/{path}", data=body, method="PUT",
                                     headers={"Content-Type": content_type})
    urllib.request.urlopen(request, timeout=30).close()


def push_blob(registry: str, repository: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    request = urllib.request.Request(f"http://{registry}/v2/{repository}/blobs/uploads/",
                                     data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=30) as resp:
        location = resp.headers["Location"]
    if "://" not in location:
        location = f"http://{registry}{location}"
    sep = "&" if "?" in location else "?"
    request = urllib.request.Request(f"{location}{sep}digest={digest}", data=data, method="PUT",
                                     headers={"Content-Type": "application/octet-stream"})
    urllib.request.urlopen(request, timeout=30).close()
    return digest


def keys(tmp_path: Path) -> tuple[Path, Path]:
    private = Ed25519PrivateKey.generate()
    key = tmp_path / "signing.pem"
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public = tmp_path / "signing.pub.pem"
    public.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, public


def test_attached_chain_verifies_and_tampering_is_caught(project: Project, testbed: Testbed,
                                                         tmp_path: Path) -> None:
    key, public = keys(tmp_path)
    namespace = unique_namespace()
    write_config(project, testbed, namespace, extra="")
    project.config.write_text(project.config.read_text()
                              + f'\n[provenance]\nkey = "{key}"\n')
    project.layer("base", 'from = "upstream:seed"\ntags = ["1"]\n')
    project.layer("child", 'from = "base"\ntags = ["2"]\n')
    code, report, err = project.cli_json("build")
    assert code == 0, err
    digests = {e["layer"]: e["digest"] for e in report["layers"]}
    assert '"event": "attested"' in err
    # Attaching never changes the image: the tag still names the built digest.
    for layer, tag in (("base", "1"), ("child", "2")):
        assert manifest_digest(testbed.registry, f"{namespace}/{layer}", tag) == digests[layer]
        index = json.loads(registry_get(
            testbed.registry, f"{namespace}/{layer}/manifests/"
            + digests[layer].replace(":", "-"), INDEX))
        kinds = sorted(m["artifactType"] for m in index["manifests"])
        assert kinds == ["application/vnd.cyclonedx+json", "application/vnd.in-toto+json"]

    image = f"{testbed.registry}/{namespace}/child:2"
    out = project.cli("explain", image, "--verify", str(public), "--json")
    assert out.returncode == 0, out.stderr
    chain: list[dict[str, Any]] = json.loads(out.stdout)
    assert [level["layer"] for level in chain] == ["child", "base", None]
    assert [level["signature"] for level in chain[:2]] == ["verified", "verified"]
    assert chain[0]["cause"] and chain[1]["cause"]
    assert chain[2]["provenance"] is False and testbed.seed_image in chain[2]["image"]
    assert chain[0]["sbom"] is not None
    text = project.cli("explain", image)
    assert text.returncode == 0 and "upstream seed" in text.stdout

    # Someone with push rights swaps child's statement for an edited one.
    repository = f"{namespace}/child"
    tag = digests["child"].replace(":", "-")
    index = json.loads(registry_get(testbed.registry, f"{repository}/manifests/{tag}", INDEX))
    entry = next(m for m in index["manifests"]
                 if m["artifactType"] == "application/vnd.in-toto+json")
    artifact = json.loads(registry_get(testbed.registry,
                                       f"{repository}/manifests/{entry['digest']}"))
    envelope = json.loads(registry_get(testbed.registry,
                                       f"{repository}/blobs/{artifact['layers'][0]['digest']}"))
    payload = base64.b64decode(envelope["payload"]).replace(b"parent build", b"parent bui1d")
    envelope["payload"] = base64.b64encode(payload).decode()
    forged = json.dumps(envelope).encode()
    artifact["layers"][0] = {**artifact["layers"][0], "digest": push_blob(
        testbed.registry, repository, forged), "size": len(forged)}
    body = json.dumps(artifact).encode()
    forged_digest = "sha256:" + hashlib.sha256(body).hexdigest()
    registry_put(testbed.registry, f"{repository}/manifests/{forged_digest}", body, MANIFEST)
    entry.update({"digest": forged_digest, "size": len(body)})
    entry["annotations"]["org.opencontainers.image.created"] = "9999-01-01T00:00:00Z"
    registry_put(testbed.registry, f"{repository}/manifests/{tag}",
                 json.dumps(index).encode(), INDEX)
    bad = project.cli("explain", image, "--verify", str(public))
    assert bad.returncode != 0 and "signature" in bad.stderr.lower(), bad.stderr
    # Without a key the forgery reads, but it says it is only "signed", not verified.
    plain = project.cli("explain", image, "--json")
    assert json.loads(plain.stdout)[0]["signature"] == "signed"


# --- what an attacker with push rights can attach -------------------------------------------

STATEMENT = "application/vnd.in-toto+json"
SBOM = "application/vnd.cyclonedx+json"
LATEST = {"org.opencontainers.image.created": "9999-12-31T23:59:59Z"}  # "newest" by annotation


def attached(registry: str, repository: str, digest: str) -> list[dict[str, Any]]:
    index = json.loads(registry_get(registry, f"{repository}/manifests/"
                                    + referrers_tag(digest), INDEX))
    return list(index["manifests"])


def document(registry: str, repository: str, artifact: str) -> bytes:
    manifest = json.loads(registry_get(registry, f"{repository}/manifests/{artifact}"))
    return registry_get(registry, f"{repository}/blobs/{manifest['layers'][0]['digest']}")


def keep_only(registry: str, repository: str, digest: str, keep: set[str]) -> None:
    """Rewrite the referrers index of ``digest`` to list only the artifacts ``keep``."""
    entries = [m for m in attached(registry, repository, digest) if m["digest"] in keep]
    registry_put(registry, f"{repository}/manifests/{referrers_tag(digest)}",
                 json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": entries}
                            ).encode(), INDEX)


def push_papers(registry: str, repository: str, subject: str, *papers: Artifact) -> list[str]:
    """Attach ``papers`` to ``repository@subject`` with the orchestrator's own artifact code."""
    async def go() -> list[str]:
        repo: ImageRef = parse_repository(f"{registry}/{repository}")
        async with RegistryClient(insecure=frozenset({registry})) as client:
            manifest = await client.get_manifest(repo, subject)
            assert manifest is not None
            return await attach(client, repo, manifest, list(papers))

    return asyncio.run(go())


def explain_json(project: Project, image: str, *args: str) -> tuple[int, Any, str]:
    out = project.cli("explain", image, "--json", *args)
    return out.returncode, json.loads(out.stdout) if out.returncode == 0 else None, out.stderr


def test_replayed_conflicting_and_false_statements_are_not_believed(
        project: Project, testbed: Testbed, tmp_path: Path) -> None:
    key, public = keys(tmp_path)
    namespace = unique_namespace()
    write_config(project, testbed, namespace, extra="")
    project.config.write_text(project.config.read_text()
                              + f'\n[provenance]\nkey = "{key}"\n')
    project.layer("base", 'from = "upstream:seed"\ntags = ["1"]\n')
    project.layer("child", 'from = "base"\ntags = ["2"]\n')
    code, report, err = project.cli_json("build")
    assert code == 0, err
    digests = {e["layer"]: e["digest"] for e in report["layers"]}
    builds = {e["layer"]: e["build_id"] for e in report["layers"]}
    registry, child_repo = testbed.registry, f"{namespace}/child"
    image = f"{registry}/{child_repo}:2"

    # 1. base's genuine signed statement and SBOM, replayed onto child and "newest".
    base_papers = {m["artifactType"]: m["digest"]
                   for m in attached(registry, f"{namespace}/base", digests["base"])}
    replayed_statement = document(registry, f"{namespace}/base", base_papers[STATEMENT])
    replayed_sbom = document(registry, f"{namespace}/base", base_papers[SBOM])
    own = {m["artifactType"]: m["digest"] for m in attached(registry, child_repo,
                                                              digests["child"])}
    replay, planted = push_papers(
        registry, child_repo, digests["child"],
        Artifact(STATEMENT, dsse.ENVELOPE_MEDIA_TYPE, replayed_statement, LATEST),
        Artifact(SBOM, SBOM, replayed_sbom, LATEST))
    code, chain, err = explain_json(project, image, "--verify", str(public))
    assert code == 0, err
    assert chain[0]["layer"] == "child" and chain[0]["build_id"] == builds["child"]
    assert chain[0]["signature"] == "verified" and chain[0]["sbom_bound"] is True
    assert [i["artifact"] for i in chain[0]["ignored"]] == [replay]
    assert f"its subject is {registry}/{namespace}/base@{digests['base']}" in \
        chain[0]["ignored"][0]["why"]
    assert [level["layer"] for level in chain] == ["child", "base", None]
    sbom = project.cli("sbom", image, "--verify", str(public))
    assert sbom.returncode == 0, sbom.stderr
    assert json.loads(sbom.stdout)["metadata"]["component"]["bom-ref"] == digests["child"]
    assert planted not in sbom.stdout

    # 2. A second statement, signed by the same key, for child's digest but other
    #    inputs (what a builder could only be tricked into): --verify fails, plain
    #    explain shows the conflict.
    genuine = provenance.read_statement(dsse.verify(document(registry, child_repo,
                                                             own[STATEMENT]),
                                                    public.read_bytes()))
    other = build_facts(genuine, subject=digests["child"], parent=digests["base"],
                        build_key="f" * 64, finished=datetime.now(UTC) + timedelta(days=1))
    signed = dsse.encode_envelope(dsse.sign(other, key.read_bytes()))
    (conflicting,) = push_papers(registry, child_repo, digests["child"],
                                 Artifact(STATEMENT, dsse.ENVELOPE_MEDIA_TYPE, signed, {}))
    assert conflicting not in {own[STATEMENT], replay}
    bad = project.cli("explain", image, "--verify", str(public))
    assert bad.returncode == 1 and "disagree" in bad.stderr, bad.stderr
    code, chain, err = explain_json(project, image)
    assert code == 0, err
    assert [c["artifact"] for c in chain[0]["conflicts"]] == [own[STATEMENT]]
    assert chain[0]["statements"] == 2
    assert "CONFLICT" in project.cli("explain", image).stdout

    # 3. Only the replayed statement is left: nothing for child counts.
    keep_only(registry, child_repo, digests["child"], {replay, planted})
    bad = project.cli("explain", image, "--verify", str(public))
    assert bad.returncode == 1 and "not this image" in bad.stderr, bad.stderr
    assert project.cli("explain", image).returncode == 1
    assert project.cli("sbom", image).returncode == 1

    # 4. An unsigned statement for child's digest naming another parent (the seed):
    #    the image's own base.digest label says otherwise.
    seed = manifest_digest(registry, testbed.seed_image.split("/", 1)[1], testbed.seed_tag)
    assert seed is not None
    label = image_config(registry, child_repo, digests["child"])["config"]["Labels"][
        "org.opencontainers.image.base.digest"]
    assert label == digests["base"] != seed
    false_parent = build_facts(genuine, subject=digests["child"], parent=seed,
                               finished=datetime.now(UTC) + timedelta(days=2))
    push_papers(registry, child_repo, digests["child"],
                Artifact(STATEMENT, STATEMENT, false_parent, LATEST))
    bad = project.cli("explain", image)
    assert bad.returncode == 1 and "base.digest label says " + digests["base"] in bad.stderr, \
        bad.stderr
    bad = project.cli("explain", image, "--verify", str(public))
    assert bad.returncode == 1 and "unsigned" in bad.stderr, bad.stderr


def build_facts(genuine: provenance.ProvenanceSummary, *, subject: str, parent: str,
                finished: datetime, build_key: str | None = None) -> bytes:
    """A statement like ``genuine`` for ``subject`` standing on ``parent``."""
    assert genuine.parent_uri is not None and genuine.dockerfile_sha256 is not None
    facts = provenance.BuildFacts(
        subject=provenance.ImageSubject(genuine.subject_name, subject), layer=genuine.layer,
        dockerfile_path=genuine.dockerfile_path or "Dockerfile",
        dockerfile_sha256=genuine.dockerfile_sha256,
        context_digest=genuine.context_digest or "sha256:" + "0" * 64,
        build_args=genuine.build_args, platform=genuine.platform or "linux/amd64",
        builder=provenance.Builder("buildah", "1"), orchestrator_version="0",
        build_id="b-forged", started=finished - timedelta(seconds=1), finished=finished,
        cause="forged",
        parent=provenance.ParentImage(genuine.parent_uri.removeprefix("pkg:docker/")
                                      .split("@", 1)[0], parent),
        build_key=build_key or genuine.build_key)
    return provenance.encode_statement(provenance.build_statement(facts))


@pytest.mark.timeout(600)
def test_a_statement_of_another_platform_of_the_index_is_not_believed(
        project: Project, testbed: Testbed, tmp_path: Path) -> None:
    multi = _testbed_settings().get("ORCH_TEST_MULTI_IMAGE")
    if not multi:
        pytest.fail("the test bed has no multi-platform seed (scripts/testbed up)")
    key, public = keys(tmp_path)
    namespace = unique_namespace()
    project.write_config(f"""
        [catalog]
        layers = "layers"
        [registry]
        url = "{testbed.registry}/{namespace}"
        tls_verify = false
        [build]
        backend = "buildah"
        platforms = ["linux/amd64", "linux/arm64"]
        [state]
        dir = "state"
        [provenance]
        key = "{key}"
        sbom = false
        [upstream.seed]
        image = "{multi}"
        tag = "1"
        tls_verify = false
    """)
    # COPY only: no RUN, so the other platform needs no emulation.
    project.layer("base", 'from = "upstream:seed"\ntags = ["1"]\n',
                  "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY f.txt /tmp/f.txt\nUSER 1000\n",
                  files={"f.txt": "x\n"})
    code, _, err = project.cli_json("build")
    assert code == 0, err
    registry, repository = testbed.registry, f"{namespace}/base"
    index = json.loads(registry_get(registry, f"{repository}/manifests/1", INDEX))
    per = {f"{m['platform']['os']}/{m['platform']['architecture']}": m["digest"]
           for m in index["manifests"]}
    host = from_machine(os.uname().machine)
    other = next(p for p in per if p != host)
    mine = {m["digest"] for m in attached(registry, repository, per[host])}
    theirs = next(m["digest"] for m in attached(registry, repository, per[other]))
    (replay,) = push_papers(registry, repository, per[host], Artifact(
        STATEMENT, dsse.ENVELOPE_MEDIA_TYPE, document(registry, repository, theirs), LATEST))

    image = f"{registry}/{repository}:1"
    code, chain, err = explain_json(project, image, "--verify", str(public))
    assert code == 0, err
    assert chain[0]["image"].endswith(per[host])
    seed_platforms = {f"{m['platform']['os']}/{m['platform']['architecture']}": m["digest"]
                      for m in json.loads(registry_get(
                          registry, f"{multi.split('/', 1)[1]}/manifests/1", INDEX))["manifests"]}
    assert chain[1]["image"].endswith(seed_platforms[host])  # not the other platform's parent
    assert [i["artifact"] for i in chain[0]["ignored"]] == [replay]
    assert f"{other}, not this image" in chain[0]["ignored"][0]["why"]

    keep_only(registry, repository, per[host], {replay})
    bad = project.cli("explain", image, "--verify", str(public))
    assert bad.returncode == 1 and f"{other}, not this image" in bad.stderr, bad.stderr
    assert mine  # the genuine one was there before
