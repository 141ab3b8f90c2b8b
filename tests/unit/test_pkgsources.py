"""An image's package sources, from its own apt and apk configuration."""

from __future__ import annotations

from orchestrator.core.pkgsources import ApkRepository, AptSuite, image_sources


def test_one_line_sources_with_options_and_comments() -> None:
    files: dict[str, str | None] = {"etc/apt/sources.list": (
        "# the archive\n"
        "deb http://deb.debian.org/debian bookworm main contrib # trailing\n"
        "deb-src http://deb.debian.org/debian bookworm main\n"
        "deb [trusted=yes arch=amd64,arm64] http://127.0.0.1:8080/repo/ internal main\n"
        "deb [signed-by=/usr/share/keyrings/x.gpg] https://mirror.example/debian-security "
        "bookworm-security main\n"
        "deb http://127.0.0.1:8080/flat ./\n")}
    sources, problems = image_sources(files)
    assert problems == []
    assert sources == [
        AptSuite("http://deb.debian.org/debian", "bookworm", ("main", "contrib"),
                 origins=("etc/apt/sources.list:2",)),
        AptSuite("http://127.0.0.1:8080/repo", "internal", ("main",), ("amd64", "arm64"),
                 trusted=True, origins=("etc/apt/sources.list:4",)),
        AptSuite("https://mirror.example/debian-security", "bookworm-security", ("main",),
                 signed_by="/usr/share/keyrings/x.gpg", origins=("etc/apt/sources.list:5",)),
        AptSuite("http://127.0.0.1:8080/flat", "./", (), origins=("etc/apt/sources.list:6",)),
    ]
    assert [s.security for s in sources] == [False, False, True, False]
    assert sources[3].flat and not sources[0].flat
    assert sources[0].id == "apt http://deb.debian.org/debian bookworm"


def test_deb822_sources_expand_uris_and_suites_and_skip_disabled_ones() -> None:
    files: dict[str, str | None] = {"etc/apt/sources.list.d/debian.sources": (
        "Types: deb deb-src\n"
        "URIs: http://deb.debian.org/debian\n"
        "Suites: trixie trixie-updates\n"
        "Components: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        "\n"
        "# security\n"
        "Types: deb\n"
        "URIs: http://deb.debian.org/debian-security\n"
        "Suites: trixie-security\n"
        "Components: main\n"
        "Signed-By:\n"
        " -----BEGIN PGP PUBLIC KEY BLOCK-----\n"
        " .\n"
        " mQINBGPL\n"
        " -----END PGP PUBLIC KEY BLOCK-----\n"
        "\n"
        "Types: deb\n"
        "URIs: http://old.example/debian\n"
        "Suites: bullseye\n"
        "Components: main\n"
        "Enabled: no\n"),
        "etc/apt/sources.list.d/internal.sources": (
            "Types: deb\nURIs: http://127.0.0.1:9/r\nSuites: stable\nComponents: main\n"
            "Trusted: yes\nArchitectures: amd64\n")}
    sources, problems = image_sources(files)
    assert problems == []
    apt = [s for s in sources if isinstance(s, AptSuite)]
    assert [(s.uri, s.suite, s.signed_by, s.trusted) for s in apt] == [
        ("http://deb.debian.org/debian", "trixie",
         "/usr/share/keyrings/debian-archive-keyring.gpg", False),
        ("http://deb.debian.org/debian", "trixie-updates",
         "/usr/share/keyrings/debian-archive-keyring.gpg", False),
        ("http://deb.debian.org/debian-security", "trixie-security", "inline key", False),
        ("http://127.0.0.1:9/r", "stable", None, True),
    ]
    assert apt[3].architectures == ("amd64",)


def test_the_same_suite_twice_is_one_index_with_both_origins() -> None:
    files: dict[str, str | None] = {
        "etc/apt/sources.list": "deb http://x.example/debian bookworm main\n",
        "etc/apt/sources.list.d/extra.list": "deb http://x.example/debian/ bookworm contrib\n"}
    [suite], _ = image_sources(files)
    assert isinstance(suite, AptSuite)
    assert suite.components == ("main", "contrib")
    assert suite.origins == ("etc/apt/sources.list:1", "etc/apt/sources.list.d/extra.list:1")


def test_apk_repositories_with_tags_and_the_images_arch() -> None:
    files: dict[str, str | None] = {
        "etc/apk/repositories": "https://dl-cdn.alpinelinux.org/alpine/v3.20/main\n"
                                "# a comment\n\n"
                                "@edge https://dl-cdn.alpinelinux.org/alpine/edge/community/\n"
                                "/media/cdrom/apks\n",
        "etc/apk/arch": "x86_64\n"}
    sources, problems = image_sources(files)
    assert problems == []
    assert sources == [
        ApkRepository("https://dl-cdn.alpinelinux.org/alpine/v3.20/main", None, ("x86_64",),
                      ("etc/apk/repositories:1",)),
        ApkRepository("https://dl-cdn.alpinelinux.org/alpine/edge/community", "@edge",
                      ("x86_64",), ("etc/apk/repositories:4",)),
        ApkRepository("/media/cdrom/apks", None, ("x86_64",), ("etc/apk/repositories:5",)),
    ]
    assert [s.pollable for s in sources] == [True, True, False]


def test_lines_that_are_not_sources_are_reported_with_their_place() -> None:
    files: dict[str, str | None] = {
        "etc/apt/sources.list": "deb http://x.example/debian\n"
                                "rpm http://x.example/fedora 39\n"
                                "deb http://x.example/debian bookworm\n"
                                "deb http://x.example/flat ./ main\n"
                                "deb [trusted] http://x.example/debian bookworm main\n",
        "etc/apt/sources.list.d/x.sources": "URIs: http://x.example\n",
        "etc/apk/repositories": "@tag\n"}
    sources, problems = image_sources(files)
    assert [str(p) for p in problems] == [
        "etc/apk/repositories:1: not a repository URL: '@tag'",
        "etc/apt/sources.list:1: a deb line needs a URI and a suite",
        "etc/apt/sources.list:2: not a deb line: 'rpm http://x.example/fedora 39'",
        "etc/apt/sources.list:3: suite 'bookworm' needs components (e.g. main)",
        "etc/apt/sources.list:4: suite './' is a flat repository path: it takes no "
        "components",
        "etc/apt/sources.list:5: option 'trusted' has no value",
        "etc/apt/sources.list.d/x.sources#1: no Types field",
    ]
    assert len(sources) == 1  # the line with the bad option is still read


def test_arch_additions_and_removals_do_not_replace_the_images_architectures() -> None:
    # apt: "arch+=i386" adds to, "arch-=i386" removes from the default set (the
    # image's own). Read as "arch=i386", the suite was polled for i386 alone and no
    # entry ever matched the amd64 packages: its fixes were silently never seen.
    files: dict[str, str | None] = {"etc/apt/sources.list": (
        "deb [arch-=i386] http://x.example/debian bookworm-security main\n"
        "deb [arch+=i386 signed-by=/k.gpg] http://y.example/debian bookworm-security main\n"
        "deb [arch=arm64] http://z.example/debian bookworm-security main\n")}
    sources, problems = image_sources(files)
    assert problems == []
    assert [s.architectures for s in sources] == [(), (), ("arm64",)]
    assert sources[1].signed_by == "/k.gpg"  # type: ignore[union-attr]


def test_a_one_line_source_may_be_separated_by_tabs() -> None:
    # apt splits a sources.list line on any whitespace.
    files: dict[str, str | None] = {"etc/apt/sources.list":
                                    "deb\thttp://x.example/debian\tbookworm-security\tmain\n"}
    sources, problems = image_sources(files)
    assert problems == []
    assert sources == [AptSuite("http://x.example/debian", "bookworm-security", ("main",),
                                origins=("etc/apt/sources.list:1",))]
