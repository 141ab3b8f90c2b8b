"""Provenance statements (in-toto v1 + SLSA v1) and DSSE envelopes: built, read back, signed."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from packageurl import PackageURL

from orchestrator.core import dsse
from orchestrator.core.provenance import (
    BUILD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    Builder,
    BuildFacts,
    GitUpstream,
    ImageSubject,
    ParentImage,
    ProvenanceError,
    RegistryUpstream,
    build_statement,
    docker_purl,
    encode_statement,
    read_statement,
)

D_IMAGE = "sha256:" + "1" * 64
D_PARENT = "sha256:" + "2" * 64
D_ALPINE = "sha256:" + "3" * 64
D_CONTEXT = "sha256:" + "4" * 64
DOCKERFILE_HEX = "5" * 64
COMMIT = "6" * 40
STARTED = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def facts(**changes: Any) -> BuildFacts:
    base = BuildFacts(
        subject=ImageSubject("127.0.0.1:5000/base/python", D_IMAGE),
        layer="python:3.13",
        dockerfile_path="layers/python/Dockerfile",
        dockerfile_sha256=DOCKERFILE_HEX,
        context_digest=D_CONTEXT,
        build_args={"PYTHON_VERSION": "3.13.5", "BASE_IMAGE": "127.0.0.1:5000/base/pyenv@"
                    + D_PARENT},
        platform="linux/amd64",
        builder=Builder("buildah", "1.39.3"),
        orchestrator_version="0.1.0",
        build_id="b-42",
        started=STARTED,
        finished=STARTED + timedelta(minutes=3, seconds=12),
        cause="upstream pyenv v2.5.0 -> v2.5.1",
        parent=ParentImage("127.0.0.1:5000/base/pyenv", D_PARENT, "2.5.1"),
        upstreams=(
            RegistryUpstream("alpine", "alpine", D_ALPINE, "3.21"),
            GitUpstream("pyenv", "https://github.com/pyenv/pyenv.git", COMMIT, "v2.5.1"),
        ),
        reason="parent rebuilt",
        parent_build_id="b-41",
        build_key="k" * 64,
    )
    return dataclasses.replace(base, **changes)


# --- the statement -----------------------------------------------------------------------


def test_statement_has_in_toto_and_slsa_shape() -> None:
    statement = build_statement(facts())
    assert statement["_type"] == STATEMENT_TYPE == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == PREDICATE_TYPE == "https://slsa.dev/provenance/v1"
    assert statement["subject"] == [{"name": "127.0.0.1:5000/base/python",
                                     "digest": {"sha256": "1" * 64}}]
    definition = statement["predicate"]["buildDefinition"]
    assert definition["buildType"] == BUILD_TYPE
    assert definition["externalParameters"] == {
        "layer": "python:3.13", "dockerfile": "layers/python/Dockerfile",
        "args": {"BASE_IMAGE": "127.0.0.1:5000/base/pyenv@" + D_PARENT,
                 "PYTHON_VERSION": "3.13.5"},
        "platform": "linux/amd64",
    }
    assert definition["internalParameters"] == {"buildKey": "k" * 64, "reason": "parent rebuilt"}
    run = statement["predicate"]["runDetails"]
    assert run["builder"] == {"id": "https://orchestrator.dev/builder/buildah",
                              "version": {"orchestrator": "0.1.0", "buildah": "1.39.3"}}
    assert run["metadata"] == {
        "invocationId": "b-42", "startedOn": "2025-03-01T12:00:00Z",
        "finishedOn": "2025-03-01T12:03:12Z",
        "orchestrator_cause": {"text": "upstream pyenv v2.5.0 -> v2.5.1", "parentBuildId": "b-41"},
    }


def test_dependencies_follow_buildkit_conventions() -> None:
    deps = {d["name"]: d for d in
            build_statement(facts())["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert list(deps) == ["dockerfile", "context", "parent", "upstream:alpine", "upstream:pyenv"]
    assert deps["dockerfile"] == {"name": "dockerfile", "digest": {"sha256": DOCKERFILE_HEX}}
    assert deps["context"]["digest"] == {"sha256": "4" * 64}
    assert deps["parent"] == {
        "name": "parent", "digest": {"sha256": "2" * 64},
        "uri": "pkg:docker/127.0.0.1:5000/base/pyenv@2.5.1?platform=linux%2Famd64"}
    # Docker Hub's library/ images are shortened, as BuildKit writes them.
    assert deps["upstream:alpine"]["uri"] == "pkg:docker/alpine@3.21?platform=linux%2Famd64"
    assert deps["upstream:pyenv"] == {
        "name": "upstream:pyenv", "uri": "https://github.com/pyenv/pyenv.git#refs/tags/v2.5.1",
        "digest": {"gitCommit": COMMIT, "sha1": COMMIT}}


@pytest.mark.parametrize(("repository", "tag", "platform", "digest", "expected"), [
    ("alpine", "3.21", None, None, "pkg:docker/alpine@3.21"),
    ("docker.io/library/alpine", "3.21", "linux/arm64/v8", None,
     "pkg:docker/alpine@3.21?platform=linux%2Farm64%2Fv8"),
    ("user/tool", "v2", None, None, "pkg:docker/user/tool@v2"),
    ("ghcr.io/foo/bar", None, None, D_ALPINE, f"pkg:docker/ghcr.io/foo/bar?digest={D_ALPINE}"),
    ("127.0.0.1:5000/base/os", "1", "linux/amd64", None,
     "pkg:docker/127.0.0.1:5000/base/os@1?platform=linux%2Famd64"),
])
def test_docker_purl_matches_buildkit_and_parses_as_a_purl(
        repository: str, tag: str | None, platform: str | None, digest: str | None,
        expected: str) -> None:
    text = docker_purl(repository, tag, platform, digest)
    assert text == expected
    parsed = PackageURL.from_string(text)  # a well-kept parser agrees on the parts
    assert parsed.type == "docker"
    assert parsed.version == tag
    assert parsed.qualifiers.get("platform") == platform


def test_minimal_facts_omit_optional_parts() -> None:
    statement = build_statement(facts(parent=None, upstreams=(), reason=None,
                                      parent_build_id=None, build_key=None,
                                      builder=Builder("buildkit", "0.20.1",
                                                      id="https://ci.example/builders/7")))
    definition = statement["predicate"]["buildDefinition"]
    assert [d["name"] for d in definition["resolvedDependencies"]] == ["dockerfile", "context"]
    assert definition["internalParameters"] == {}
    run = statement["predicate"]["runDetails"]
    assert run["builder"]["id"] == "https://ci.example/builders/7"
    assert run["metadata"]["orchestrator_cause"] == {"text": "upstream pyenv v2.5.0 -> v2.5.1"}


def test_times_accept_epoch_seconds_and_other_zones() -> None:
    epoch = build_statement(facts(started=STARTED.timestamp(), finished=1740831000.25))
    metadata = epoch["predicate"]["runDetails"]["metadata"]
    assert metadata["startedOn"] == "2025-03-01T12:00:00Z"
    assert metadata["finishedOn"] == "2025-03-01T12:10:00.250Z"
    cet = timezone(timedelta(hours=1))
    zoned = build_statement(facts(started=datetime(2025, 3, 1, 13, 0, tzinfo=cet)))
    assert zoned["predicate"]["runDetails"]["metadata"]["startedOn"] == "2025-03-01T12:00:00Z"


@pytest.mark.parametrize(("changes", "field"), [
    ({"subject": ImageSubject("r/x", "sha256:short")}, "subject.digest"),
    ({"context_digest": "4" * 64}, "context_digest"),
    ({"dockerfile_sha256": "sha256:" + DOCKERFILE_HEX}, "dockerfile_sha256"),
    ({"started": datetime(2025, 3, 1)}, "started"),  # naive: which zone?
    ({"upstreams": (GitUpstream("pyenv", "https://g/p.git", "main"),)}, "upstream:pyenv.commit"),
    ({"upstreams": (RegistryUpstream("a", "alpine", D_ALPINE),
                    RegistryUpstream("a", "alpine", D_ALPINE))}, "listed twice"),
    ({"parent": ParentImage("r/p", "sha256:" + "x" * 64)}, "parent.digest"),
])
def test_bad_facts_are_refused_naming_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ProvenanceError, match=field):
        build_statement(facts(**changes))


def test_encoding_is_stable() -> None:
    first = encode_statement(build_statement(facts()))
    again = encode_statement(build_statement(facts(build_args={
        "PYTHON_VERSION": "3.13.5", "BASE_IMAGE": "127.0.0.1:5000/base/pyenv@" + D_PARENT})))
    assert first == again
    assert json.loads(first) == build_statement(facts())
    assert b'": ' not in first
    assert b', "' not in first


# --- reading back ------------------------------------------------------------------------


def test_read_statement_returns_what_explain_needs() -> None:
    summary = read_statement(encode_statement(build_statement(facts())))
    assert summary.subject_name == "127.0.0.1:5000/base/python"
    assert summary.subject_digest == D_IMAGE
    assert summary.layer == "python:3.13"
    assert summary.build_id == "b-42"
    assert summary.builder_id == "https://orchestrator.dev/builder/buildah"
    assert summary.builder_versions == {"orchestrator": "0.1.0", "buildah": "1.39.3"}
    assert summary.started == STARTED
    assert summary.finished == STARTED + timedelta(minutes=3, seconds=12)
    assert summary.cause == "upstream pyenv v2.5.0 -> v2.5.1"
    assert summary.reason == "parent rebuilt"
    assert summary.parent_build_id == "b-41"
    assert summary.parent_digest == D_PARENT
    assert summary.parent_uri == "pkg:docker/127.0.0.1:5000/base/pyenv@2.5.1?platform=linux%2Famd64"
    assert set(summary.upstreams) == {"alpine", "pyenv"}
    assert summary.upstreams["alpine"].digest == {"sha256": "3" * 64}
    assert summary.upstreams["pyenv"].digest["gitCommit"] == COMMIT
    assert summary.dockerfile_sha256 == DOCKERFILE_HEX
    assert summary.context_digest == D_CONTEXT
    assert summary.platform == "linux/amd64"
    assert summary.build_args["PYTHON_VERSION"] == "3.13.5"


def test_read_statement_ignores_unknown_fields_and_tolerates_missing_optional_ones() -> None:
    statement = build_statement(facts(parent=None, upstreams=(), reason=None,
                                      parent_build_id=None))
    statement["predicate"]["runDetails"]["metadata"]["someone_else"] = {"x": 1}
    statement["predicate"]["runDetails"]["byproducts"] = [{"name": "log", "digest": {"a": "b"}}]
    del statement["predicate"]["runDetails"]["metadata"]["finishedOn"]
    summary = read_statement(statement)
    assert summary.parent_digest is None
    assert summary.upstreams == {}
    assert summary.finished is None
    assert summary.reason is None


def _broken(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    statement = build_statement(facts())
    target = statement
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return statement


_DELETE = object()


@pytest.mark.parametrize(("path", "value", "message"), [
    (("_type",), "https://in-toto.io/Statement/v0.1", "_type"),
    (("predicateType",), "https://slsa.dev/provenance/v0.2", "predicateType"),
    (("predicate", "buildDefinition", "buildType"), "https://mobyproject.org/buildkit@v1",
     "buildType"),
    (("subject",), [], "subject"),
    (("subject",), [{"digest": {"sha256": "a" * 64}}, {"digest": {"sha256": "b" * 64}}],
     "subject"),
    (("subject", 0, "digest"), {"sha512": "a" * 128}, "sha256"),
    (("predicate", "runDetails", "metadata", "invocationId"), _DELETE, "invocationId"),
    (("predicate", "runDetails", "metadata", "startedOn"), "yesterday", "startedOn"),
    (("predicate", "runDetails", "metadata", "startedOn"), "2025-03-01T12:00:00", "time zone"),
    (("predicate", "buildDefinition", "externalParameters", "layer"), 7, "layer"),
    (("predicate", "buildDefinition", "resolvedDependencies"), [{"name": "x"}],
     r"resolvedDependencies\[0\]"),
    (("predicate", "runDetails"), "nope", "runDetails"),
])
def test_read_statement_rejects_what_is_not_ours(path: tuple[Any, ...], value: Any,
                                                 message: str) -> None:
    with pytest.raises(ProvenanceError, match=message):
        read_statement(_broken(path, value))


def test_read_statement_rejects_non_json() -> None:
    with pytest.raises(ProvenanceError, match="not JSON"):
        read_statement(b"{nope")
    with pytest.raises(ProvenanceError, match="expected an object"):
        read_statement("[1, 2]")


# --- DSSE --------------------------------------------------------------------------------


def _pem_private(key: Any, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password
        else serialization.NoEncryption())
    pem: bytes = key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8, encryption)
    return pem


def _pem_public(key: Any) -> bytes:
    pem: bytes = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem


def _new_key(algorithm: str) -> Any:
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(params=["ed25519", "ecdsa-p256"])
def key(request: pytest.FixtureRequest) -> Any:
    return _new_key(request.param)


def test_pae_matches_the_spec_vector() -> None:
    assert dsse.pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    assert dsse.pae("t", b"") == b"DSSEv1 1 t 0 "
    assert dsse.pae("\u00e9", b"x") == "DSSEv1 2 \u00e9 1 x".encode()  # lengths in bytes


def test_sign_then_verify_with_the_public_key(key: Any) -> None:
    payload = encode_statement(build_statement(facts()))
    envelope = dsse.sign(payload, _pem_private(key))
    assert envelope["payloadType"] == dsse.IN_TOTO_PAYLOAD_TYPE == "application/vnd.in-toto+json"
    assert base64.b64decode(envelope["payload"]) == payload
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    assert envelope["signatures"][0]["keyid"] == hashlib.sha256(der).hexdigest()
    assert dsse.key_id(_pem_public(key)) == dsse.key_id(_pem_private(key)) == \
        hashlib.sha256(der).hexdigest()
    assert dsse.verify(envelope, _pem_public(key)) == payload
    assert dsse.verify(dsse.encode_envelope(envelope), _pem_public(key)) == payload
    assert dsse.verify(envelope, _pem_private(key)) == payload  # convenience
    assert read_statement(dsse.verify(envelope, _pem_public(key))).layer == "python:3.13"


def test_any_changed_payload_byte_fails_verification(key: Any) -> None:
    payload = encode_statement(build_statement(facts()))
    signing = dsse.load_signing_key(_pem_private(key))
    envelope = dsse.sign(payload, signing)
    public = _pem_public(key)
    for index in range(len(payload)):
        tampered = bytearray(payload)
        tampered[index] ^= 0x01
        forged = {**envelope, "payload": base64.b64encode(bytes(tampered)).decode()}
        with pytest.raises(dsse.SignatureError, match="no signature verifies"):
            dsse.verify(forged, public)
    for cut in (payload[:-1], payload + b" "):
        forged = {**envelope, "payload": base64.b64encode(cut).decode()}
        with pytest.raises(dsse.SignatureError):
            dsse.verify(forged, public)


def test_signed_type_is_part_of_the_signature(key: Any) -> None:
    envelope = dsse.sign(b"{}", _pem_private(key))
    retyped = {**envelope, "payloadType": "application/vnd.other+json"}
    with pytest.raises(dsse.SignatureError, match="payloadType"):
        dsse.verify(retyped, _pem_public(key))
    with pytest.raises(dsse.SignatureError, match="no signature verifies"):
        dsse.verify(retyped, _pem_public(key), payload_type=None)


def test_wrong_key_and_broken_signature_fail(key: Any) -> None:
    envelope = dsse.sign(b"{}", _pem_private(key))
    other = _new_key("ed25519")
    with pytest.raises(dsse.SignatureError, match="no signature verifies"):
        dsse.verify(envelope, _pem_public(other))
    sig = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
    sig[-1] ^= 0x01
    broken = {**envelope, "signatures": [{"keyid": "", "sig": base64.b64encode(sig).decode()}]}
    with pytest.raises(dsse.SignatureError):
        dsse.verify(broken, _pem_public(key))


def test_url_safe_unpadded_base64_is_accepted(key: Any) -> None:
    envelope = dsse.sign(b"\xfb\xff payload", _pem_private(key), payload_type="x/y")
    def url(text: str) -> str:
        return base64.urlsafe_b64encode(base64.b64decode(text)).decode().rstrip("=")
    relaxed = {"payloadType": "x/y", "payload": url(envelope["payload"]),
               "signatures": [{"sig": url(envelope["signatures"][0]["sig"])}]}
    assert dsse.verify(relaxed, _pem_public(key), payload_type="x/y") == b"\xfb\xff payload"


def test_a_second_signature_by_another_key_still_verifies(key: Any) -> None:
    other = _new_key("ed25519")
    first = dsse.sign(b"{}", _pem_private(other))
    second = dsse.sign(b"{}", _pem_private(key))
    both = {**first, "signatures": first["signatures"] + second["signatures"]}
    assert dsse.verify(both, _pem_public(key)) == b"{}"
    assert dsse.open_document(both).key_ids == (dsse.key_id(_pem_public(other)),
                                                dsse.key_id(_pem_public(key)))


def test_encrypted_private_key_needs_its_password() -> None:
    key = _new_key("ed25519")
    pem = _pem_private(key, password=b"s3cret")
    envelope = dsse.sign(b"{}", pem, password=b"s3cret")
    assert dsse.verify(envelope, pem, password=b"s3cret") == b"{}"
    with pytest.raises(dsse.SignatureError, match="cannot load"):
        dsse.load_signing_key(pem)


@pytest.mark.parametrize("unsupported", [
    lambda: ec.generate_private_key(ec.SECP384R1()),
    lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),
])
def test_other_key_types_are_refused(unsupported: Any) -> None:
    key = unsupported()
    with pytest.raises(dsse.SignatureError, match="not supported"):
        dsse.load_signing_key(_pem_private(key))
    with pytest.raises(dsse.SignatureError, match="not supported"):
        dsse.key_id(_pem_public(key))


def test_garbage_keys_are_refused() -> None:
    with pytest.raises(dsse.SignatureError, match="cannot load the public key"):
        dsse.key_id(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(dsse.SignatureError, match="cannot load the private key"):
        dsse.load_signing_key(b"not a key")


def test_unsigned_documents_are_distinguishable(key: Any) -> None:
    statement = build_statement(facts())
    payload = encode_statement(statement)
    envelope = dsse.sign(payload, _pem_private(key))

    assert dsse.signature_status(payload) == "unsigned"
    assert dsse.signature_status(statement) == "unsigned"
    assert dsse.signature_status(envelope) == "signed"

    bare = dsse.open_document(payload, _pem_public(key))  # a key, but nothing signed
    assert (bare.status, bare.payload, bare.payload_type, bare.key_ids) == \
        ("unsigned", payload, None, ())
    assert dsse.open_document(statement).payload == payload

    signed = dsse.open_document(dsse.encode_envelope(envelope))
    assert signed.status == "signed"
    assert signed.payload == payload
    assert signed.key_ids == (dsse.key_id(_pem_public(key)),)
    verified = dsse.open_document(envelope, _pem_public(key))
    assert verified.status == "verified"
    with pytest.raises(dsse.SignatureError):
        dsse.open_document(envelope, _pem_public(_new_key("ed25519")))

    with pytest.raises(dsse.SignatureError, match="not a DSSE envelope"):
        dsse.verify(payload, _pem_public(key))


@pytest.mark.parametrize(("envelope", "message"), [
    ({"payloadType": "t", "payload": "e30=", "signatures": []}, "no signatures"),
    ({"payloadType": "t", "payload": "e30="}, "no signatures"),
    ({"payloadType": "t", "payload": "%%%", "signatures": [{"sig": "AA=="}]}, "payload"),
    ({"payloadType": "t", "payload": "e30=", "signatures": [{"sig": 5}]}, "sig"),
    ({"payloadType": "t", "payload": "e30=", "signatures": [{"sig": "AA==", "keyid": 1}]},
     "keyid"),
    ({"payloadType": 3, "payload": "e30=", "signatures": [{"sig": "AA=="}]}, "strings"),
])
def test_malformed_envelopes_are_refused(envelope: dict[str, Any], message: str) -> None:
    with pytest.raises(dsse.SignatureError, match=message):
        dsse.open_document(envelope)


def test_modules_import_only_the_standard_library() -> None:
    """The CLI imports these to read attestations; signing and SBOM writing pay for
    cryptography / cyclonedx when they run, not at import."""
    code = ("import sys\n"
            "import orchestrator.core.provenance, orchestrator.core.dsse, "
            "orchestrator.core.sbom, orchestrator.registry.imagefs\n"
            "heavy = [m for m in ('cryptography', 'cyclonedx', 'packageurl', 'serializable') "
            "if m in sys.modules]\n"
            "print(','.join(heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""


# --- no credential in a statement --------------------------------------------------------


def test_a_statement_carries_no_credential_whatever_the_facts_say() -> None:
    canary = "glpat-canary-1234"
    statement = build_statement(facts(
        upstreams=(GitUpstream("pyenv", f"https://ci:{canary}@git.example/pyenv.git", COMMIT,
                               "v2.5.1"),),
        build_args={"MIRROR": f"https://{canary}@mirror.example/simple",
                    "HEADER": f"Authorization: Bearer {canary}"},
        cause=f"upstream pyenv: git ls-remote https://ci:{canary}@git.example/pyenv.git"))
    encoded = encode_statement(statement)
    assert canary.encode() not in encoded
    summary = read_statement(encoded)
    assert summary.upstreams["pyenv"].uri == "https://git.example/pyenv.git#refs/tags/v2.5.1"
    assert summary.build_args["MIRROR"] == "https://mirror.example/simple"
    # Build args are data: one named like a secret keeps its (credential-free) value.
    assert build_statement(facts(build_args={"TOKEN_FILE": "/run/x"}))["predicate"][
        "buildDefinition"]["externalParameters"]["args"] == {"TOKEN_FILE": "/run/x"}


def test_the_statement_names_its_sbom_and_its_key() -> None:
    sbom = "sha256:" + "9" * 64
    statement = build_statement(facts(sbom_digest=sbom))
    assert statement["predicate"]["runDetails"]["byproducts"] == [
        {"name": "sbom", "mediaType": "application/vnd.cyclonedx+json",
         "digest": {"sha256": "9" * 64}}]
    summary = read_statement(encode_statement(statement))
    assert summary.sbom_digest == sbom and summary.build_key == "k" * 64
    assert read_statement(encode_statement(build_statement(facts()))).sbom_digest is None
    with pytest.raises(ProvenanceError, match="sbom_digest"):
        build_statement(facts(sbom_digest="sha256:nothex"))


# --- which attached statement counts -----------------------------------------------------


def _attached(artifact: str, *, status: str = "verified", **changes: Any) -> Any:
    from orchestrator.core.attestation import Attached

    summary = read_statement(encode_statement(build_statement(facts(**changes))))
    return Attached(artifact, summary, status)


D_OTHER = "sha256:" + "7" * 64


def test_a_statement_replayed_from_another_image_does_not_count() -> None:
    from orchestrator.core.attestation import judge

    ours = _attached("sha256:" + "a" * 64)
    # Another image's genuine, signed statement, attached to ours and finishing later.
    replayed = _attached("sha256:" + "b" * 64, subject=ImageSubject("r/base", D_OTHER),
                         finished=STARTED + timedelta(days=400), layer="base")
    verdict = judge([replayed, ours], D_IMAGE, key=True)
    assert verdict.chosen is ours and verdict.counted == (ours,)
    assert verdict.ignored == (("sha256:" + "b" * 64,
                                f"its subject is r/base@{D_OTHER}, linux/amd64, "
                                "not this image"),)
    # Alone, it leaves nothing that counts.
    alone = judge([replayed], D_IMAGE, key=True)
    assert alone.chosen is None and "not this image" in alone.ignored_text()


def test_a_statement_for_another_platform_of_the_index_does_not_count() -> None:
    from orchestrator.core.attestation import judge

    ours = _attached("sha256:" + "a" * 64)
    arm = _attached("sha256:" + "b" * 64, platform="linux/arm64",
                    subject=ImageSubject("127.0.0.1:5000/base/python", D_OTHER),
                    finished=STARTED + timedelta(days=1))
    verdict = judge([arm, ours], D_IMAGE, key=False)
    assert verdict.chosen is ours
    assert "linux/arm64, not this image" in verdict.ignored[0][1]


def test_with_a_key_only_verified_statements_count() -> None:
    from orchestrator.core.attestation import Attached, judge

    unsigned = _attached("sha256:" + "c" * 64, status="unsigned")
    broken = Attached("sha256:" + "d" * 64, None, "rejected", "no signature verifies")
    verdict = judge([unsigned, broken], D_IMAGE, key=True)
    assert verdict.chosen is None
    assert [why for _, why in verdict.ignored] == [
        "unsigned, so it cannot be verified with the key", "no signature verifies"]
    assert judge([unsigned], D_IMAGE, key=False).chosen is unsigned


def test_rebuilds_to_the_same_digest_agree_and_the_last_finished_is_shown() -> None:
    from orchestrator.core.attestation import judge

    first = _attached("sha256:" + "f" * 64, build_id="b-1")
    again = _attached("sha256:" + "0" * 64, build_id="b-2", cause="scheduled",
                      finished=STARTED + timedelta(days=7))
    verdict = judge([first, again], D_IMAGE, key=True)
    assert verdict.chosen is again and verdict.conflicts == ()
    assert len(verdict.counted) == 2


def test_statements_that_disagree_on_the_inputs_are_conflicts() -> None:
    from orchestrator.core.attestation import judge

    ours = _attached("sha256:" + "a" * 64)
    other = _attached("sha256:" + "e" * 64, build_key="x" * 64, build_id="b-99",
                      build_args={"PYTHON_VERSION": "3.12.0"},
                      finished=STARTED + timedelta(hours=1))
    verdict = judge([ours, other], D_IMAGE, key=True)
    assert verdict.chosen is other and verdict.conflicts == (ours,)


def test_the_sbom_is_the_one_the_statement_names() -> None:
    from orchestrator.core.attestation import choose_sbom

    def sbom(about: str, *packages: str) -> bytes:
        return json.dumps({"metadata": {"component": {"bom-ref": about}},
                           "components": [{"purl": p, "version": "1"} for p in packages]}
                          ).encode()

    ours, planted = sbom(D_IMAGE, "pkg:pypi/flask"), sbom(D_IMAGE, "pkg:pypi/evil")
    other_image = sbom(D_OTHER, "pkg:pypi/flask")
    documents = [("sha256:" + "1" * 64, ours), ("sha256:" + "2" * 64, planted),
                 ("sha256:" + "3" * 64, other_image)]
    named = choose_sbom(documents, D_IMAGE, "sha256:" + "1" * 64)
    assert named.document == ours and named.bound
    missing = choose_sbom(documents[1:], D_IMAGE, "sha256:" + "1" * 64)
    assert missing.document is None and "not attached" in (missing.problem or "")
    # No statement names one: only SBOMs about this image, and they must agree.
    assert choose_sbom([documents[0], documents[2]], D_IMAGE, None).document == ours
    assert choose_sbom([documents[2]], D_IMAGE, None).document is None
    disagree = choose_sbom(documents, D_IMAGE, None)
    assert disagree.document is None and "different packages" in (disagree.problem or "")


def test_explain_shows_no_credential_from_a_statement_an_older_version_pushed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A statement pushed before redaction (or by anyone who can push) may carry a
    mirror's ``user:password@`` in a package index, its annotations or the builder:
    ``explain`` shows none of them."""
    import asyncio

    from orchestrator.core.attestation import Attached
    from orchestrator.core.imageref import parse_repository
    from orchestrator.registry import explain as papers

    statement = build_statement(facts())
    secret = "https://ci:hunter2@deb.example/debian"
    statement["predicate"]["buildDefinition"]["resolvedDependencies"].append(
        {"name": "packages:bookworm-security", "uri": secret,
         "digest": {"sha256": "8" * 64}, "annotations": {"source": secret}})
    statement["predicate"]["runDetails"]["builder"]["version"] = {"buildah": secret}
    statement["predicate"]["buildDefinition"]["internalParameters"]["reason"] = secret
    summary = read_statement(encode_statement(statement))

    async def found(*_: Any) -> list[Attached]:
        return [Attached("sha256:" + "a" * 64, summary, "unsigned")]

    async def no_sboms(*_: Any) -> list[tuple[str, bytes]]:
        return []

    monkeypatch.setattr(papers, "statements", found)
    monkeypatch.setattr(papers, "sboms", no_sboms)
    level, _ = asyncio.run(papers.level_of(None, parse_repository("r/base/python"),  # type: ignore[arg-type]
                                           D_IMAGE, None))
    shown = json.dumps(level.as_json()) + papers.render([level])
    assert "deb.example/debian" in shown
    assert "hunter2" not in shown
