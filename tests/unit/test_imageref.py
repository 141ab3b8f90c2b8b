"""Image references: Docker's normalisation and the grammar checks for config values."""

from __future__ import annotations

import pytest

from orchestrator.core.imageref import (
    DOCKER_HUB,
    ImageRef,
    Reference,
    check_digest,
    check_reference,
    check_repository,
    check_tag,
    normalize,
    parse_reference,
    parse_repository,
)

SHA = "sha256:" + "0123456789abcdef" * 4
INJECTED = 'v9",name=attacker.example/loot,"x='


@pytest.mark.parametrize("text", [
    "debian",
    "debian:latest",
    "library/debian",
    "library/debian:latest",
    "docker.io/debian",
    "docker.io/library/debian:latest",
    "index.docker.io/library/debian",  # the legacy name of Docker Hub
])
def test_every_spelling_of_debian_normalises_the_same(text: str) -> None:
    ref = parse_reference(text)
    assert ref.normalized() == "docker.io/library/debian:latest"
    assert ref == Reference(DOCKER_HUB, "library/debian", ref.tag, None)
    assert ref.is_official and ref.path == "debian"
    assert ref.familiar() in ("debian", "debian:latest")


@pytest.mark.parametrize(("text", "registry", "repository", "tag"), [
    ("myorg/pyenv:1.2.14", "docker.io", "myorg/pyenv", "1.2.14"),
    ("relenteny/alpine:3.10.2", "docker.io", "relenteny/alpine", "3.10.2"),
    ("localhost/app", "localhost", "app", None),  # "localhost" is a registry …
    ("localhost:5000/app:1", "localhost:5000", "app", "1"),
    ("registry.example/base/python:3.12", "registry.example", "base/python", "3.12"),
    ("registry.example:5000/a/b/c", "registry.example:5000", "a/b/c", None),
    ("quay.io/org/tool:v1", "quay.io", "org/tool", "v1"),
    ("[::1]:5000/app:x", "[::1]:5000", "app", "x"),
    ("ghcr.io/org/app", "ghcr.io", "org/app", None),
    # … a first component without "." or ":" is a namespace on Docker Hub.
    ("localdomain/app", "docker.io", "localdomain/app", None),
])
def test_registry_repository_and_tag(text: str, registry: str, repository: str,
                                     tag: str | None) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag,
                                                                   None)
    assert ref.image == ImageRef(registry, repository)
    assert not ref.is_official


def test_a_port_is_not_a_tag() -> None:
    assert parse_reference("localhost:5000/app").tag is None
    assert parse_reference("localhost:5000/app").normalized() == "localhost:5000/app:latest"


def test_digests() -> None:
    only = parse_reference(f"alpine@{SHA}")
    assert only.tag is None and only.digest == SHA and only.effective_tag is None
    # Docker adds "latest" only when neither a tag nor a digest is given.
    assert only.normalized() == f"docker.io/library/alpine@{SHA}"
    both = parse_reference(f"alpine:3.20@{SHA}")
    assert both.normalized() == f"docker.io/library/alpine:3.20@{SHA}"
    assert both.familiar() == f"alpine:3.20@{SHA}"
    assert parse_reference("alpine:3.20").pinned(SHA) == f"docker.io/library/alpine@{SHA}"
    assert check_digest(SHA) is None
    assert check_digest("sha256:abc") == "a sha256 digest has 64 lower-case hex digits"
    assert "algorithm:hex" in (check_digest("nocolon") or "")
    assert check_digest("sha256:" + "A" * 64) is not None
    assert check_digest("sha512:" + "a" * 128) is None
    assert check_digest("blake3:" + "a" * 40) is None  # unregistered algorithms: any length


def test_familiar_form_and_str() -> None:
    assert parse_reference("docker.io/library/python:3.12").familiar() == "python:3.12"
    assert parse_reference("docker.io/myorg/app:1").familiar() == "myorg/app:1"
    assert parse_reference("quay.io/org/app:1").familiar() == "quay.io/org/app:1"
    assert str(parse_reference("python")) == "docker.io/library/python:latest"
    assert normalize("golang:1.22") == "docker.io/library/golang:1.22"


def test_upper_case_first_component_is_a_registry_to_docker_but_refused_in_config() -> None:
    ref = parse_reference("MyOrg/app")
    assert (ref.registry, ref.repository) == ("MyOrg", "app")
    assert "lower-case" in (check_reference("MyOrg/app") or "")
    assert "lower-case" in (check_repository("MyOrg/app") or "")


@pytest.mark.parametrize(("text", "needle"), [
    ("", "empty image reference"),
    ("App", "must be lower-case ('app' would do)"),
    ("Registry.Example/App:1", "must be lower-case"),
    ("quay.io/Org/app", "must be lower-case"),
    ("a//b", "empty path component"),
    ("a/", "empty path component"),
    ("-a", "must start and end with a letter or digit"),
    ("a..b", "must start and end with a letter or digit"),
    ("a___b", "must start and end with a letter or digit"),
    ("a b", "white space"),
    (" alpine", "white space"),
    ("alpine:", "empty tag"),
    ("alpine:-x", "must start with a letter, digit or '_'"),
    ("alpine@sha256:abc", "64 lower-case hex digits"),
    ("bad_host.example/app", "not a valid registry host"),
    ("-bad.example/app", "not a valid registry host"),
    ("regístry.example/app", "not a valid registry host"),
    ("app$x", "character '$' is not allowed"),
    (f"myimg:{INJECTED}", "not a valid registry host"),
    ("x" * 256, "longer than 255"),
])
def test_bad_references_say_why(text: str, needle: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_reference(text)
    assert needle in str(caught.value)
    assert needle in (check_reference(text) or "")


@pytest.mark.parametrize("tag", ["3.12", "3.12-slim", "_x", "A", "v1.2.3-rc.1", "x" * 128,
                                 "latest", "1__2"])
def test_valid_tags(tag: str) -> None:
    assert check_tag(tag) is None


@pytest.mark.parametrize(("tag", "needle"), [
    ("", "empty tag"),
    ("3.12 slim", "character ' ' is not allowed"),
    ("-x", "must start with a letter, digit or '_'"),
    (".x", "must start with a letter, digit or '_'"),
    ("x" * 129, "129 characters long; at most 128"),
    (INJECTED, "character '\"' is not allowed"),  # from an upstream git tag
    ("v1\n", "character '\\n' is not allowed"),
    ("vé", "character 'é' is not allowed"),  # the grammar is ASCII
    ("a:b", "character ':' is not allowed"),
    ("a/b", "character '/' is not allowed"),
])
def test_invalid_tags_say_why(tag: str, needle: str) -> None:
    assert needle in (check_tag(tag) or "")


@pytest.mark.parametrize("name", [
    "python", "base/python", "a.b", "a_b", "a__b", "a---b", "a-b.c_d", "0x",
    "registry.example:5000/base/python", "localhost/app", "localhost:5000/a", "[::1]:5000/a",
    "Registry.Example/app",  # host names are case-insensitive
])
def test_valid_repositories(name: str) -> None:
    assert check_repository(name) is None


@pytest.mark.parametrize(("name", "needle"), [
    ("", "empty repository name"),
    ("App", "must be lower-case"),
    ("Registry.Example/App", "must be lower-case"),
    ("base/Python", "must be lower-case"),
    ("a___b", "one or two '_'"),
    ("a.", "must start and end"),
    ("/a", "empty path component"),
    ("registry.example:5000/", "no repository path"),
    ("bad host/x", "character ' ' is not allowed"),
    ("x:5000:1/y", "not a valid registry host"),
    ("app:1", "character ':' is not allowed"),  # a tag has no place in a repository
    ("a" * 256, "at most 255"),
])
def test_invalid_repositories_say_why(name: str, needle: str) -> None:
    assert needle in (check_repository(name) or "")


def test_valid_references() -> None:
    for ref in ("debian", "debian:bookworm-slim", f"debian@{SHA}", f"x/y:1@{SHA}",
                "localhost:5000/a/b:c", "registry.example/base/python:3.12.1"):
        assert check_reference(ref) is None


def test_parse_repository_is_unchanged() -> None:
    assert parse_repository("alpine") == ImageRef("docker.io", "library/alpine")
    assert parse_repository("myorg/app") == ImageRef("docker.io", "myorg/app")
    assert parse_repository("127.0.0.1:5000/base/app") == ImageRef("127.0.0.1:5000", "base/app")
    assert parse_repository("localhost/app").registry == "localhost"
    assert parse_repository("alpine").api_host == "registry-1.docker.io"
    assert parse_repository("alpine").tagged("3") == "docker.io/library/alpine:3"
