"""Every pushed image gets a provenance statement and an SBOM in the registry;
explain reads the chain back (and verifies signatures); tampering is caught;
attaching never changes the image's digest."""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import Project, Testbed, manifest_digest, unique_namespace
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
