"""`orchestrator init`: scanning existing Dockerfiles into a catalog."""

# The seed Dockerfiles below are kept verbatim: long lines, and the typographic quotes and
# dashes the article's rendering put in them (they also show non-ASCII text is harmless).
# ruff: noqa: E501, RUF001

from __future__ import annotations

import tomllib
from pathlib import Path, PurePosixPath

import pytest

from orchestrator.catalog.adopt import (
    AdoptedUpstream,
    AdoptionError,
    dockerfile_variant,
    find_dockerfiles,
    scan,
    suggest_track,
)
from orchestrator.catalog.adopt_output import summary, write
from orchestrator.core.errors import InputError
from orchestrator.core.versions import check_track, newest

# The five Dockerfiles of the seed document ("Docker镜像层级设计指南"), as printed there
# (typographic quotes and dashes included: the article's rendering, kept as found).
SEED_ALPINE = r'''FROM alpine:3.10.2
LABEL relenteny.repository.url=https://github.com/relenteny/alpine
LABEL relenteny.repository.tag=3.10.2
LABEL relenteny.alpine.version=3.10.2
RUN set -x && \
addgroup -g 1000 -S alpine && \
adduser -u 1000 -G alpine -h /home/alpine -D alpine && \
apk add –no-cache curl bind-tools
USER alpine
WORKDIR /home/alpine
ENTRYPOINT [“/bin/sh”, “-l”]
CMD []
'''

SEED_PYENV = r'''FROM relenteny/alpine:3.10.2
LABEL relenteny.repository.url=https://github.com/relenteny/python-pyenv
LABEL relenteny.repository.tag=1.2.14
LABEL relenteny.pyenv.version=1.2.14
LABEL relenteny.pyenv.virtualenv.version=1.1.5
COPY build /opt/build
USER root
RUN set -x && \
apk add –no-cache git bash build-base libffi-dev openssl-dev bzip2-dev zlib-dev readline-dev sqlite-dev && \
cp -r /opt/build/home/alpine/* /home/alpine && \
chmod +x /home/alpine/bin/*.sh && \
chown -R alpine.alpine /home/alpine && \
rm -rf /opt/build
USER alpine
RUN set -x && \
cd /home/alpine && \
git clone https://github.com/pyenv/pyenv.git /home/alpine/.pyenv && \
cd /home/alpine/.pyenv && \
git branch pyenv-1.2.14 v1.2.14 && \
git checkout pyenv-1.2.14 && \
cd /home/alpine && \
git clone https://github.com/pyenv/pyenv-virtualenv.git /home/alpine/.pyenv/plugins/pyenv-virtualenv && \
cd /home/alpine/.pyenv/plugins/pyenv-virtualenv && \
git branch virtualenv-1.1.5 v1.1.5 && \
git checkout virtualenv-1.1.5 && \
cd /home/alpine && \
echo ‘export PYENV_ROOT=”$HOME/.pyenv”‘ >> /home/alpine/.profile && \
echo ‘export PATH=”$PYENV_ROOT/bin:$PATH”‘ >> /home/alpine/.profile && \
echo ‘eval “$(pyenv init -)”‘ >> /home/alpine/.profile && \
echo ‘eval “$(pyenv virtualenv-init -)”‘ >> /home/alpine/.profile
'''

SEED_PYTHON = r'''FROM relenteny/pyenv:1.2.14
LABEL relenteny.repository.url=https://github.com/relenteny/python
LABEL relenteny.repository.tag=3.7.4
LABEL relenteny.python.version=3.7.4
RUN /home/alpine/bin/install-python.sh 3.7.4
'''

SEED_FLASK = r'''FROM relenteny/python:3.7.4
LABEL relenteny.repository.url=https://github.com/relenteny/flask
LABEL relenteny.repository.tag=1.1.1
LABEL relenteny.flask.version=1.1.1
COPY build /opt/build
USER root
RUN set -x && \
cp -r /opt/build/home/alpine/* /home/alpine && \
chown -R alpine.alpine /home/alpine/* && \
rm -rf /opt/build
USER alpine
RUN set -x && \
cd /home/alpine && \
bin/install-requirements.sh /home/alpine/requirements.txt && \
rm /home/alpine/requirements.txt
'''

SEED_FLASK_HELLOWORLD = r'''FROM relenteny/flask:1.1.1
LABEL relenteny.repository.url=https://github.com/relenteny/flask-helloworld
LABEL relenteny.repository.tag=1.0.0
RUN set -x && \
cd /home/alpine && \
git clone https://github.com/miguelgrinberg/microblog.git && \
cd microblog && \
git checkout v0.1 && \
echo “FLASK_APP=microblog.py” > .flaskenv
WORKDIR /home/alpine/microblog
ENTRYPOINT [ “/bin/sh”, “-lc”, “flask run –host 0.0.0.0”]
'''


def make_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


SEED = {
    "alpine/Dockerfile": SEED_ALPINE,
    "pyenv/Dockerfile": SEED_PYENV,
    "python/Dockerfile": SEED_PYTHON,
    "flask/Dockerfile": SEED_FLASK,
    "flask-helloworld/Dockerfile": SEED_FLASK_HELLOWORLD,
}


# -- the seed hierarchy ----------------------------------------------------------------


def test_seed_hierarchy_is_inferred(tmp_path: Path) -> None:
    adoption = scan(make_tree(tmp_path / "relenteny", SEED))
    assert [layer.name for layer in adoption.layers] == [
        "alpine", "pyenv", "python", "flask", "flask-helloworld"]
    chain = {layer.name: (layer.parent, layer.upstream) for layer in adoption.layers}
    assert chain == {
        "alpine": (None, "alpine"),
        "pyenv": ("alpine", None),
        "python": ("pyenv", None),
        "flask": ("python", None),
        "flask-helloworld": ("flask", None),
    }
    (alpine,) = adoption.upstreams
    assert alpine == AdoptedUpstream("alpine", "docker.io/library/alpine", "3.10.2",
                                     "semver:~3", ("alpine:3.10.2",))
    # Tags come from what children call their parents; the leaf has none.
    assert {layer.name: layer.tags for layer in adoption.layers} == {
        "alpine": ("3.10.2",), "pyenv": ("1.2.14",), "python": ("3.7.4",),
        "flask": ("1.1.1",), "flask-helloworld": ()}
    pyenv = adoption.layer("pyenv")
    assert (pyenv.image, pyenv.dockerfile, pyenv.context) == (
        "pyenv", PurePosixPath("pyenv/Dockerfile"), PurePosixPath("pyenv"))
    assert (pyenv.parent_ref, pyenv.parent_line) == ("relenteny/alpine:3.10.2", 1)
    assert adoption.registry_hint == "docker.io/relenteny"
    # alpine and pyenv end with USER alpine; python and below inherit it.
    assert not any(layer.runs_as_root for layer in adoption.layers)
    assert adoption.notes == ()


def test_seed_without_its_os_layer_starts_at_the_published_alpine(tmp_path: Path) -> None:
    files = {k: v for k, v in SEED.items() if not k.startswith("alpine/")}
    adoption = scan(make_tree(tmp_path / "seed", files))
    assert [(layer.name, layer.parent, layer.upstream) for layer in adoption.layers] == [
        ("pyenv", None, "alpine"), ("python", "pyenv", None), ("flask", "python", None),
        ("flask-helloworld", "flask", None)]
    assert adoption.upstreams == (AdoptedUpstream(
        "alpine", "docker.io/relenteny/alpine", "3.10.2", "semver:~3",
        ("relenteny/alpine:3.10.2",)),)
    # pyenv sets USER alpine itself; the upstream below it counts as root otherwise.
    assert not adoption.layer("flask").runs_as_root


def test_seed_written_as_a_catalog(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "src", SEED)
    before = {p: p.read_bytes() for p in tree.rglob("*") if p.is_file()}
    out = tmp_path / "catalog"
    printed = write(scan(tree), out)

    assert {p: p.read_bytes() for p in tree.rglob("*") if p.is_file()} == before
    config = tomllib.loads((out / "config.toml").read_text(encoding="utf-8"))
    assert config["catalog"] == {"layers": "layers"}
    assert config["upstream"] == {"alpine": {
        "image": "docker.io/library/alpine", "tag": "3.10.2", "names": ["alpine:3.10.2"]}}
    config_text = (out / "config.toml").read_text(encoding="utf-8")
    assert '# track = "semver:~3"' in config_text
    assert '# url = "docker.io/relenteny"' in config_text

    layers = {p.parent.name: tomllib.loads(p.read_text(encoding="utf-8"))
              for p in (out / "layers").glob("*/layer.toml")}
    assert layers["alpine"]["from"] == "upstream:alpine"
    assert layers["pyenv"] == {
        "from": "alpine", "image": "pyenv", "tags": ["1.2.14"],
        "dockerfile": "../../../src/pyenv/Dockerfile", "context": "../../../src/pyenv"}
    assert "tags" not in layers["flask-helloworld"]
    for name, table in layers.items():
        folder = out / "layers" / name
        assert (folder / table["dockerfile"]).resolve() == (tree / name / "Dockerfile")
        assert (folder / table["context"]).resolve() == tree / name
        assert not Path(table["dockerfile"]).is_absolute()
    assert "FROM relenteny/pyenv:1.2.14 (line 1) is layer 'pyenv'" in (
        out / "layers" / "python" / "layer.toml").read_text(encoding="utf-8")

    assert printed.splitlines()[1:7] == [
        "upstream alpine: docker.io/library/alpine:3.10.2, track suggestion: semver:~3",
        "  alpine  alpine [3.10.2]  (alpine/Dockerfile)",
        "    pyenv  pyenv [1.2.14]  (pyenv/Dockerfile)",
        "      python  python [3.7.4]  (python/Dockerfile)",
        "        flask  flask [1.1.1]  (flask/Dockerfile)",
        "          flask-helloworld  flask-helloworld [no tag]  (flask-helloworld/Dockerfile)",
    ]
    assert "  layers/flask-helloworld/layer.toml" in printed


def test_writer_never_overwrites_and_writes_nothing_when_it_refuses(tmp_path: Path) -> None:
    adoption = scan(make_tree(tmp_path / "src", SEED))
    out = tmp_path / "out"
    mine = out / "layers" / "python" / "layer.toml"
    mine.parent.mkdir(parents=True)
    mine.write_text("# mine\n")
    with pytest.raises(InputError, match=r"layers/python/layer\.toml: already exists"):
        write(adoption, out)
    assert mine.read_text() == "# mine\n"
    assert not (out / "config.toml").exists()
    assert not (out / "layers" / "alpine").exists()

    (out / "layers" / "python" / "layer.toml").unlink()
    write(adoption, out)
    with pytest.raises(InputError, match=r"config\.toml: already exists"):
        write(adoption, out)


# -- an official-images style tree -----------------------------------------------------

HEADER = """\
#
# NOTE: THIS DOCKERFILE IS GENERATED VIA "update.sh"
#
# PLEASE DO NOT EDIT IT DIRECTLY.
#

"""

OFFICIAL_STYLE = {
    "buildpack-deps/bookworm/curl/Dockerfile": HEADER + """\
FROM debian:bookworm

RUN set -eux; \\
	apt-get update; \\
	apt-get install -y --no-install-recommends \\
		ca-certificates \\
		curl \\
# gnupg verifies the downloads below
		gnupg \\
		wget \\
	; \\
	rm -rf /var/lib/apt/lists/*
""",
    "buildpack-deps/bookworm/scm/Dockerfile": HEADER + """\
FROM buildpack-deps:bookworm-curl

RUN set -eux; \\
	apt-get update; \\
	apt-get install -y --no-install-recommends git mercurial openssh-client; \\
	rm -rf /var/lib/apt/lists/*
""",
    "buildpack-deps/bookworm/Dockerfile": HEADER + """\
FROM buildpack-deps:bookworm-scm

RUN set -ex; \\
	apt-get update; \\
	apt-get install -y --no-install-recommends \\
		autoconf automake bzip2 gcc make \\
	; \\
	rm -rf /var/lib/apt/lists/*
""",
    "python/3.12/bookworm/Dockerfile": HEADER + """\
FROM buildpack-deps:bookworm

ENV PYTHON_VERSION 3.12.4
RUN set -eux; \\
	./configure --enable-optimizations; \\
	make -j "$(nproc)"
CMD ["python3"]
""",
    "python/3.12/slim-bookworm/Dockerfile": HEADER + """\
FROM debian:bookworm-slim

ENV PYTHON_VERSION 3.12.4
CMD ["python3"]
""",
    "app/Dockerfile": """\
# syntax=docker/dockerfile:1
ARG GO_VERSION=1.22
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
WORKDIR /src
RUN --mount=type=cache,target=/root/.cache/go-build \\
    go build -o /out/helper ./cmd/helper

FROM python:3.12-slim-bookworm
COPY --from=build /out/helper /usr/local/bin/helper
USER 1000
""",
    # Not Dockerfiles of the tree:
    ".git/Dockerfile": "FROM nothing\n",
    ".devcontainer/Dockerfile": "FROM mcr.microsoft.com/devcontainers/base\n",
    "vendor/lib/Dockerfile": "FROM nothing\n",
    "python/Dockerfile.template": "FROM {{ .from }}\n",
    "python/3.12/bookworm/Dockerfile.dockerignore": "*\n",
}


def test_official_images_style_tree(tmp_path: Path) -> None:
    adoption = scan(make_tree(tmp_path / "images", OFFICIAL_STYLE))
    assert adoption.reading == "nested"
    got = {layer.name: (layer.image, layer.tags, layer.parent, layer.upstream)
           for layer in adoption.layers}
    assert got == {
        "buildpack-deps-bookworm-curl": ("buildpack-deps", ("bookworm-curl",), None,
                                         "debian-bookworm"),
        "buildpack-deps-bookworm-scm": ("buildpack-deps", ("bookworm-scm",),
                                        "buildpack-deps-bookworm-curl", None),
        "buildpack-deps-bookworm": ("buildpack-deps", ("bookworm",),
                                    "buildpack-deps-bookworm-scm", None),
        "python-3.12-bookworm": ("python", ("3.12-bookworm",), "buildpack-deps-bookworm",
                                 None),
        "python-3.12-slim-bookworm": ("python", ("3.12-slim-bookworm",), None,
                                      "debian-bookworm-slim"),
        "app": ("app", (), "python-3.12-slim-bookworm", None),
    }
    names = [layer.name for layer in adoption.layers]
    for layer in adoption.layers:  # parents first
        assert layer.parent is None or names.index(layer.parent) < names.index(layer.name)
    app = adoption.layer("app")
    assert app.upstream_needs == ("golang",) and app.parent_ref == "python:3.12-slim-bookworm"
    assert not app.runs_as_root and adoption.layer("python-3.12-bookworm").runs_as_root
    assert [(u.name, u.image, u.tag, u.track, u.names) for u in adoption.upstreams] == [
        ("debian-bookworm", "docker.io/library/debian", "bookworm", None, ("debian:bookworm",)),
        ("debian-bookworm-slim", "docker.io/library/debian", "bookworm-slim", None,
         ("debian:bookworm-slim",)),
        ("golang", "docker.io/library/golang", "1.22", "semver:~1", ("golang:1.22",)),
    ]
    assert adoption.registry_hint is None
    printed = summary(adoption)
    assert "upstream golang: docker.io/library/golang:1.22, track suggestion: semver:~1; " \
           "also used by app" in printed
    assert "      python-3.12-bookworm  python [3.12-bookworm]  " \
           "(python/3.12/bookworm/Dockerfile)" in printed


def test_one_official_images_repository_scanned_at_its_root(tmp_path: Path) -> None:
    files = {k.removeprefix("buildpack-deps/"): v for k, v in OFFICIAL_STYLE.items()
             if k.startswith("buildpack-deps/")}
    adoption = scan(make_tree(tmp_path / "buildpack-deps", files))
    assert adoption.reading == "repository"
    assert [(layer.name, layer.image, layer.tags, layer.parent) for layer in adoption.layers] == [
        ("buildpack-deps-bookworm-curl", "buildpack-deps", ("bookworm-curl",), None),
        ("buildpack-deps-bookworm-scm", "buildpack-deps", ("bookworm-scm",),
         "buildpack-deps-bookworm-curl"),
        ("buildpack-deps-bookworm", "buildpack-deps", ("bookworm",),
         "buildpack-deps-bookworm-scm"),
    ]
    assert "(read as one repository)" in summary(adoption)


def test_version_folders_belong_to_the_scanned_repository(tmp_path: Path) -> None:
    adoption = scan(make_tree(tmp_path / "python", {
        "3.12/slim-bookworm/Dockerfile": "FROM debian:bookworm-slim\n",
        "tools/Dockerfile.dev": "FROM python:3.12-slim-bookworm\n",
        "Dockerfile": "FROM python:3.12-slim-bookworm\n",
    }))
    got = {layer.dockerfile.as_posix(): (layer.image, layer.tags, layer.parent)
           for layer in adoption.layers}
    assert got == {
        "3.12/slim-bookworm/Dockerfile": ("python", ("3.12-slim-bookworm",), None),
        "tools/Dockerfile.dev": ("tools", ("dev",), "python-3.12-slim-bookworm"),
        "Dockerfile": ("python", (), "python-3.12-slim-bookworm"),
    }


def test_labels_name_the_image(tmp_path: Path) -> None:
    adoption = scan(make_tree(tmp_path / "src", {
        "os/Dockerfile": "FROM alpine:3.20\n"
                         'LABEL org.opencontainers.image.title="base-os" \\\n'
                         "      org.opencontainers.image.version=2.0\n",
        "svc/Dockerfile": "FROM registry.example:5000/team/base-os:2.0\n",
        # Titles that are not repository names, and variable versions, are ignored.
        "web/Dockerfile": "FROM nginx:1.27\nARG V\n"
                          'LABEL org.opencontainers.image.title="My Web" '
                          "org.opencontainers.image.version=$V\n",
    }))
    assert adoption.layer("base-os-2.0").image == "base-os"
    assert adoption.layer("svc").parent == "base-os-2.0"
    assert adoption.layer("web").image == "web"
    assert adoption.registry_hint == "registry.example:5000/team"


# -- matching rules --------------------------------------------------------------------


def test_official_images_do_not_teach_tags(tmp_path: Path) -> None:
    # A tree folder "python" does not capture FROM python:3.12 (the real one) …
    adoption = scan(make_tree(tmp_path / "src", {
        "python/Dockerfile": "FROM relenteny/pyenv:1.2.14\n",
        "app/Dockerfile": "FROM python:3.12\n",
        "tool/Dockerfile": "FROM acme/python:3.7.4\n",
        "cli/Dockerfile": "FROM python\n",
    }))
    assert adoption.layer("app").upstream == "python"
    # … while a namespaced reference, or "latest", does.
    assert adoption.layer("tool").parent == "python"
    assert adoption.layer("cli").parent == "python"
    # "latest" is never published (lint refuses it): cli builds on it through from = "python".
    assert adoption.layer("python").tags == ("3.7.4",)
    assert any("cli/Dockerfile:1 names it python (latest)" in note
               for note in adoption.layer("python").notes)
    assert [u.name for u in adoption.upstreams] == ["pyenv", "python"]


def test_a_self_named_reference_means_the_upstream(tmp_path: Path) -> None:
    adoption = scan(make_tree(tmp_path / "src", {
        "debian/bookworm/Dockerfile": "FROM debian:bookworm\nRUN echo ours\n",
        "app/Dockerfile": "FROM debian:bookworm\n",
        "svc/Dockerfile": "FROM myorg/debian:bookworm\n",
    }))
    assert adoption.layer("debian-bookworm").upstream == "debian"
    assert adoption.layer("app").upstream == "debian"
    assert adoption.layer("svc").parent == "debian-bookworm"
    assert any("app/Dockerfile:1: debian:bookworm is read as the upstream image" in n
               for n in adoption.notes)


def test_digest_pinned_and_unresolvable_parents(tmp_path: Path) -> None:
    sha = "sha256:" + "e" * 64
    adoption = scan(make_tree(tmp_path / "src", {
        "pinned/Dockerfile": f"FROM alpine:3.20@{sha}\n",
        "legacy/Dockerfile": "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n",
        "rootfs/Dockerfile": "FROM scratch\nADD rootfs.tar /\n",
    }))
    assert adoption.upstreams == ()
    for name in ("pinned", "legacy", "rootfs"):
        layer = adoption.layer(name)
        assert (layer.parent, layer.upstream) == (None, None)
    assert any("pinned by digest" in note for note in adoption.notes)
    assert "no value for BASE_IMAGE" in adoption.layer("legacy").notes[0]
    out = tmp_path / "out"
    write(adoption, out)
    texts = {n: (out / "layers" / n / "layer.toml").read_text() for n in
             ("pinned", "legacy", "rootfs")}
    assert "is pinned by digest in the Dockerfile" in texts["pinned"]
    assert '# from = "…"   # could not tell the parent' in texts["legacy"]
    assert "builds FROM scratch" in texts["rootfs"]
    for text in texts.values():
        assert "from" not in tomllib.loads(text)


# -- conflicts -------------------------------------------------------------------------


def test_two_dockerfiles_claiming_one_image_tag(tmp_path: Path) -> None:
    label = 'LABEL org.opencontainers.image.title=base org.opencontainers.image.version=1\n'
    with pytest.raises(AdoptionError) as caught:
        scan(make_tree(tmp_path / "src", {"a/Dockerfile": "FROM alpine\n" + label,
                                          "b/Dockerfile": "FROM debian\n" + label}))
    assert caught.value.problems == [
        "a/Dockerfile and b/Dockerfile both build base:1; rename a folder or give one an "
        "org.opencontainers.image.version LABEL"]


def test_a_cycle_names_the_files(tmp_path: Path) -> None:
    with pytest.raises(AdoptionError) as caught:
        scan(make_tree(tmp_path / "src", {"a/Dockerfile": "FROM acme/b:1\n",
                                          "b/Dockerfile": "FROM acme/a:2\n",
                                          "c/Dockerfile": "FROM acme/a:2\n"}))
    assert caught.value.problems == [
        "dependency cycle: a/Dockerfile -> b/Dockerfile -> a/Dockerfile"]


def test_a_builder_stage_cycle_counts_too(tmp_path: Path) -> None:
    with pytest.raises(AdoptionError, match="dependency cycle"):
        scan(make_tree(tmp_path / "src", {
            "a/Dockerfile": "FROM acme/b:1 AS tools\nFROM alpine\nCOPY --from=tools / /\n",
            "b/Dockerfile": "FROM alpine\nCOPY --from=acme/a:1 / /\n"}))


# -- files, names and suggestions ------------------------------------------------------


def test_which_files_are_dockerfiles(tmp_path: Path) -> None:
    assert [dockerfile_variant(n) for n in (
        "Dockerfile", "Dockerfile.slim", "slim.Dockerfile", "Containerfile",
        "Containerfile.dev", "Dockerfile.dockerignore", "Dockerfile.template",
        "x.Dockerfile.dockerignore", "Dockerfile.", "dockerfile", "Dockerfile-alpine",
        "README.md")] == [
        "", "slim", "slim", "", "dev", None, None, None, None, None, None, None]
    make_tree(tmp_path, {k: "FROM x\n" for k in (
        "Dockerfile", "a/b/c.Dockerfile", "a/Containerfile", ".github/Dockerfile",
        "node_modules/p/Dockerfile", "third_party/x/Dockerfile", "a/Dockerfile.j2")})
    (tmp_path / "loop").symlink_to(tmp_path, target_is_directory=True)
    assert [str(p) for p in find_dockerfiles(tmp_path)] == [
        "Dockerfile", "a/Containerfile", "a/b/c.Dockerfile"]


def test_ignore_files_and_other_kinds_named_like_dockerfiles_are_not_adopted(
        tmp_path: Path) -> None:
    others = ("Dockerfile.containerignore", "Containerfile.containerignore",
              "Dockerfile.dockerignore", "Dockerfile.tmpl", "Dockerfile.erb", "Dockerfile.bak",
              "Dockerfile.old", "Dockerfile.patch", "Dockerfile.yml", "Dockerfile.sample",
              "app.Dockerfile.containerignore")
    assert [n for n in others if dockerfile_variant(n) is not None] == []
    tree = make_tree(tmp_path / "src", {
        "app/Dockerfile": "FROM alpine:3.20\nUSER 1\n",
        "app/Dockerfile.containerignore": "*\n!src\n",
        # A name nobody lists, and no FROM: not a Dockerfile either.
        "app/Dockerfile.lst": "src/\nbin/\n",
        "app/Dockerfile.dev": "FROM alpine:3.20\nUSER 1\n",
    })
    adoption = scan(tree)
    assert [str(layer.dockerfile) for layer in adoption.layers] == [
        "app/Dockerfile", "app/Dockerfile.dev"]
    assert adoption.notes == ("app/Dockerfile.lst: skipped: named like a Dockerfile, but it "
                              "has no FROM instruction",)


def test_a_title_label_with_a_registry_host_names_the_image_by_its_path(
        tmp_path: Path) -> None:
    adoption = scan(make_tree(tmp_path / "src", {
        "os/Dockerfile": "FROM alpine:3.20\n"
                         "LABEL org.opencontainers.image.title=ghcr.io/acme/base \\\n"
                         "      org.opencontainers.image.version=1.0\n",
        "svc/Dockerfile": "FROM ghcr.io/acme/base:1.0\n",
        "cli/Dockerfile": "FROM acme/base:1.0 AS base\nFROM base\n",
    }))
    assert adoption.layer("acme-base-1.0").image == "acme/base"
    assert adoption.layer("svc").parent == "acme-base-1.0"
    assert adoption.layer("cli").parent == "acme-base-1.0"
    assert adoption.upstreams[0].image == "docker.io/library/alpine"
    assert len(adoption.upstreams) == 1
    assert adoption.registry_hint is None  # ghcr.io from the label, docker.io from cli
    one = scan(make_tree(tmp_path / "one", {
        "os/Dockerfile": "FROM alpine:3.20\nLABEL org.opencontainers.image.title="
                         "ghcr.io/acme/base org.opencontainers.image.version=1.0\n",
        "svc/Dockerfile": "FROM ghcr.io/acme/base:1.0\n"}))
    assert one.registry_hint == "ghcr.io"


def test_tails_that_drop_different_folders_keep_whole_path_tags(tmp_path: Path) -> None:
    adoption = scan(make_tree(tmp_path / "img", {
        "a/x/Dockerfile": "FROM alpine:3.20\n",
        "a/y/z/Dockerfile": "FROM img:x\n",  # drops 1 folder
        "b/w/Dockerfile": "FROM img:y-z\n",  # drops 1 too …
        "c/d/e/Dockerfile": "FROM img:z\n",  # … and this one 2
    }))
    assert adoption.reading == "repository"
    assert adoption.layer("img-a-y-z").parent == "img-a-x"
    assert adoption.layer("img-a-x").tags == ("a-x", "x")  # its own, then what children use
    assert not any("tags are read without" in note for note in adoption.notes)


def test_a_whole_path_tag_a_child_uses_survives_the_shorter_reading(tmp_path: Path) -> None:
    adoption = scan(make_tree(tmp_path / "img", {
        "debian/bookworm/curl/Dockerfile": "FROM debian:bookworm\n",
        "debian/bookworm/scm/Dockerfile": "FROM img:bookworm-curl\n",
        "tools/Dockerfile": "FROM img:debian-bookworm-curl\n",
    }))
    curl = adoption.layer("img-bookworm-curl")
    assert curl.tags == ("bookworm-curl", "debian-bookworm-curl")
    assert adoption.layer("img-tools").parent == curl.name


def test_odd_folder_names_become_valid_names_and_paths_stay_exact(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "My Images", {
        'We"ird App/Dockerfile': "FROM alpine:3.20\nUSER 1\n",
        "Tools__X/v1 beta/Dockerfile": "FROM alpine:3.20\nUSER 1\n",
    })
    adoption = scan(tree)
    assert [(layer.name, layer.image, layer.tags) for layer in adoption.layers] == [
        ("tools__x-v1-beta", "tools__x", ("v1-beta",)),
        ("we-ird-app", "we-ird-app", ()),
    ]
    out = tmp_path / "out"
    write(adoption, out)
    table = tomllib.loads((out / "layers" / "we-ird-app" / "layer.toml").read_text())
    dockerfile = (out / "layers" / "we-ird-app" / table["dockerfile"]).resolve()
    assert dockerfile == tree / 'We"ird App' / "Dockerfile"


def test_upstream_names_are_short_and_unique(tmp_path: Path) -> None:
    adoption = scan(make_tree(tmp_path / "src", {
        "a/Dockerfile": "FROM alpine:3.20\n",
        "b/Dockerfile": "FROM relenteny/alpine:3.20\n",
        "c/Dockerfile": "FROM quay.io/org/tool:v1.2\n",
        "d/Dockerfile": "FROM docker.io/library/alpine:3.20\n",
    }))
    assert [(u.name, u.image, u.names) for u in adoption.upstreams] == [
        ("alpine-3-20", "docker.io/library/alpine", ("alpine:3.20",
                                                     "docker.io/library/alpine:3.20")),
        ("relenteny-alpine-3-20", "docker.io/relenteny/alpine", ("relenteny/alpine:3.20",)),
        ("tool", "quay.io/org/tool", ("quay.io/org/tool:v1.2",)),
    ]


@pytest.mark.parametrize(("tag", "track"), [
    ("3.10.2", "semver:~3"), ("3", "semver:~3"), ("v1.2", "semver:~1"), ("0.9.1", "semver:~0.9"),
    ("1.22-alpine", r"regex:1\.\d+-alpine"),
    ("3.12.4-slim-bookworm", r"regex:3\.\d+\.\d+-slim\-bookworm"),
    ("bookworm", None), ("latest", None), ("3.12rc1", None),
])
def test_track_suggestions(tag: str, track: str | None) -> None:
    assert suggest_track(tag) == track
    if track is not None:
        assert check_track(track) is None
        assert newest([tag, "garbage"], track) == tag
